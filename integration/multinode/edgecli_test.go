package multinode

import (
	"context"
	"fmt"
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
	start := func(name string, addr netip.Addr, join ...netip.Addr) *cliNode {
		n := &cliNode{node: l.makeNode(name, addr)}
		n.sock = filepath.Join(n.dir, "mesh.sock")
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
}
