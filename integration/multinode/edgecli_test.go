package multinode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/store"
)

// TestEdgeCLI: `patronus mesh run --pod-network`, the built binary, on two node
// namespaces of one underlay bridge (the lab's). Each node claims its own block through
// the mesh, writes its conflist for it, serves it on /v1/nodenet of its socket, and
// routes the other's block (nodenet's route protocol) via the other's underlay address.
func TestEdgeCLI(t *testing.T) {
	requireRoot(t)
	l := newLab(t, nil, "")
	dir := t.TempDir()
	// The binary the lab runs as patronus-cni: $PATRONUS_BIN, else the lab's one build.
	bin := os.Getenv("PATRONUS_BIN")
	if bin == "" {
		bin = filepath.Join(pluginDir(t), "patronus")
	}
	clusterKey, gossipKey := filepath.Join(dir, "cluster.key"), filepath.Join(dir, "gossip.key")
	for _, args := range [][]string{{"mesh", "keygen", "--out", clusterKey}, {"mesh", "keygen", "--gossip", "--out", gossipKey}} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("patronus %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	cidr := "10.247.0.0/22"
	type cliNode struct {
		*node
		sock string
		api  *localapi.Client
	}
	// seed, when set for a node, prepares its database before it starts.
	seed := map[string]func(db string){}
	start := func(name string, addr netip.Addr, join ...netip.Addr) *cliNode {
		n := &cliNode{node: l.makeNode(name, addr)}
		n.sock = filepath.Join(n.dir, "mesh.sock")
		if f := seed[name]; f != nil {
			f(filepath.Join(n.dir, "agent.db"))
		}
		args := []string{"netns", "exec", n.netns, bin, "mesh", "run",
			"--node-name", name, "--cluster-id", "edge-cli", "--cluster-key", clusterKey, "--gossip-key", gossipKey,
			"--bind", addr.String(), "--advertise", addr.String(), "--no-beacons", "--profile", "local",
			"--refresh", "5s", "--reconnect-interval", "1s",
			"--database", filepath.Join(n.dir, "agent.db"), "--socket", n.sock, "--log-format", "text",
			"--pod-network", "--cluster-cidr", cidr, "--node-block-size", "24", "--cni-conflist", n.confList}
		for _, j := range join {
			args = append(args, "--join", netip.AddrPortFrom(j, mesh.DefaultGossipPort).String())
		}
		cmd := exec.Command("ip", args...)
		w := &tlogWriter{t: t}
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// An early exit (bad flags, datapath error) fails the test with its exit status.
		var stopping atomic.Bool
		exited := make(chan struct{})
		go func() {
			err := cmd.Wait()
			if !stopping.Load() {
				t.Errorf("%s: patronus mesh run exited early: %v", name, err)
			}
			close(exited)
		}()
		t.Cleanup(func() {
			stopping.Store(true)
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
				t.Errorf("%s: patronus mesh run did not stop on SIGTERM", name)
			}
			w.mu.Lock()
			w.done = true
			w.mu.Unlock()
		})
		n.api = localapi.NewClient(n.sock)
		t.Cleanup(n.api.Close)
		return n
	}
	addrA, addrB := netip.MustParseAddr("192.168.78.21"), netip.MustParseAddr("192.168.78.22")
	a := start("cli-a", addrA)
	b := start("cli-b", addrB, addrA)
	nodes := []*cliNode{a, b}

	status := func(n *cliNode) (localapi.NodeNet, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return n.api.NodeNet(ctx)
	}
	blocks := map[string]netip.Prefix{}
	eventually(t, 30*time.Second, "distinct blocks, conflists written, peers seen", func() error {
		for _, n := range nodes {
			st, err := status(n)
			if err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
			blk, err := netip.ParsePrefix(st.Block)
			if err != nil || st.ConfList == "" || st.Peers != 1 {
				return fmt.Errorf("%s: %+v", n.name, st)
			}
			blocks[n.name] = blk
		}
		if blocks[a.name] == blocks[b.name] {
			return fmt.Errorf("both hold %s", blocks[a.name])
		}
		return nil
	})
	parent := netip.MustParsePrefix(cidr)
	for _, n := range nodes {
		blk := blocks[n.name]
		if blk.Bits() != 24 || !parent.Contains(blk.Addr()) {
			t.Fatalf("%s: block %s is not a /24 of %s", n.name, blk, cidr)
		}
		b, err := os.ReadFile(n.confList)
		if err != nil {
			t.Fatalf("%s: conflist: %v", n.name, err)
		}
		if !strings.Contains(string(b), strconv.Quote(blk.String())) {
			t.Fatalf("%s: conflist %s lacks its block %s:\n%s", n.name, n.confList, blk, b)
		}
		for o, ob := range blocks {
			if o != n.name && strings.Contains(string(b), strconv.Quote(ob.String())) {
				t.Fatalf("%s: conflist has %s's block %s:\n%s", n.name, o, ob, b)
			}
		}
	}
	eventually(t, 15*time.Second, "each node routes the other's block via its underlay address", func() error {
		for _, n := range nodes {
			other := b
			if n == b {
				other = a
			}
			rs := ownedRoutes(t, n.node)
			want := fmt.Sprintf("via %s dev eth0", other.addr)
			if len(rs) != 1 || rs[blocks[other.name].String()] != want {
				return fmt.Errorf("%s routes %v, want %s %s", n.name, rs, blocks[other.name], want)
			}
		}
		return nil
	})
	// --masquerade defaults to true: the node's block leaving the cluster CIDR is masqueraded.
	for _, n := range nodes {
		out, err := exec.Command("ip", "netns", "exec", n.netns, "nft", "list", "chain", "inet", nodenet.DefaultMasqTable, nodenet.DefaultMasqChain).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ip saddr "+blocks[n.name].String()) || !strings.Contains(string(out), "masquerade") {
			t.Fatalf("%s: masquerade chain (%v):\n%s", n.name, err, out)
		}
	}
	t.Logf("cli-a %s, cli-b %s", blocks[a.name], blocks[b.name])

	// patronus status against an edge node's socket: its own line, the block from
	// gossip, the route to the other node, the mesh; no agent-only lines.
	for _, n := range nodes {
		other := b
		if n == b {
			other = a
		}
		out, _ := edgeStatusCmd(t, bin, n.netns, n.sock, "table")
		for _, want := range []string{"✓ Edge node: ready, node " + n.name + " in cluster edge-cli",
			"✓ Pod block: " + blocks[n.name].String() + " (from gossip)",
			"✓ Pod block claim: " + blocks[n.name].String() + " through the mesh at ",
			fmt.Sprintf("✓ Route: %s via %s dev eth0", blocks[other.name], other.addr),
			"✓ Mesh: 2 members (2 alive)"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: patronus status lacks %q:\n%s", n.name, want, out)
			}
		}
		for _, not := range []string{"NetworkPolicies", "Active tunnels", "Agent:", "Lost pod block"} {
			if strings.Contains(out, not) {
				t.Errorf("%s: patronus status has %q:\n%s", n.name, not, out)
			}
		}
	}

	// A node whose saved claim of cli-a's block is newer than cli-a's (it claimed it
	// while cut off, say) loses it at start, re-claims, and reports the pod still holding
	// an address of it: patronus status (lost block first, the pod, exit 1), the log and
	// patronus_nodenet_lost_pods on its socket's /metrics.
	lostIP := netip.PrefixFrom(blocks[a.name].Addr().Next().Next().Next().Next().Next(), blocks[a.name].Bits())
	seed["cli-c"] = func(path string) {
		ctx := context.Background()
		db, err := store.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		claim := fmt.Sprintf(`{"block":%q,"source":"gossip","claimedAt":%q}`, blocks[a.name], time.Now().UTC().Format(time.RFC3339Nano))
		if err := db.Set(ctx, nodenet.KVBlock, claim); err != nil {
			t.Fatal(err)
		}
		if err := db.PutPod(ctx, store.Pod{ContainerID: "stale-c", IfName: "eth0", Namespace: "default", Name: "stale",
			IPs: []netip.Prefix{lostIP}}); err != nil {
			t.Fatal(err)
		}
	}
	c := start("cli-c", netip.MustParseAddr("192.168.78.23"), addrA)
	var stC localapi.NodeNet
	eventually(t, 30*time.Second, "cli-c re-claimed and reports the stale pod", func() error {
		st, err := status(c)
		if err != nil {
			return err
		}
		if st.Block == "" || st.Block == blocks[a.name].String() || st.Block == blocks[b.name].String() || st.ConfList == "" ||
			len(st.Lost) != 1 || st.Lost[0].Name != "stale" || st.Lost[0].Block != blocks[a.name].String() {
			return fmt.Errorf("%+v", st)
		}
		stC = st
		return nil
	})
	if st, err := status(a); err != nil || st.Block != blocks[a.name].String() || len(st.Lost) != 0 {
		t.Fatalf("cli-a lost its older claim: %+v (%v)", st, err)
	}
	out, code := edgeStatusCmd(t, bin, c.netns, c.sock, "table")
	lostLine := "✗ Lost pod block " + blocks[a.name].String() + ": an older claim of another node won it; 1 pods on this node still hold addresses in it"
	podLine := fmt.Sprintf("✗ Pod default/stale holds %s of lost pod block %s (recreate it)", lostIP, blocks[a.name])
	blockLine := "✓ Pod block: " + stC.Block + " (from gossip)"
	li, pi, bi := strings.Index(out, lostLine), strings.Index(out, podLine), strings.Index(out, blockLine)
	if code != 1 || li < 0 || pi < 0 || bi < 0 || li > bi {
		t.Fatalf("cli-c: patronus status (exit %d) wants %q before %q, and %q:\n%s", code, lostLine, blockLine, podLine, out)
	}
	t.Logf("cli-c: patronus status (exit %d):\n%s", code, out)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://edge/metrics", nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.sock)
	}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), nodenet.MetricLostPods+" 1\n") {
		t.Fatalf("cli-c /metrics lacks %s 1:\n%s", nodenet.MetricLostPods, body)
	}
	t.Logf("cli-c lost %s (its pod default/stale %s), re-claimed %s", blocks[a.name], lostIP, stC.Block)
}

// edgeStatusCmd runs `patronus status --socket sock -o format` in netns and returns its
// output and exit code (1 is expected whenever a check fails: e.g. no bridge before the
// first pod).
func edgeStatusCmd(t *testing.T, bin, netns, sock, format string) (string, int) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", netns, bin, "status", "--socket", sock, "--cni-bin-dir", pluginDir(t), "-o", format)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("patronus status: %v: %s", err, out)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}
