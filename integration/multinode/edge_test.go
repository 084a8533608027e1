package multinode

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/store"
)

// Edge mode over the real mesh. Each edge node is this test binary re-executed inside
// the node's namespace (envEdgeNode): a mesh.Node (serf, signed announcements, gossip
// encryption) and a nodenet.EdgeController wired with nodenet.MeshEdge, serving
// /v1/nodenet and the mesh paths on a unix socket. A whole process per namespace,
// because memberlist dials its TCP streams from whatever thread runs, which must be in
// the node's namespace. The partition is nftables drops inside the node namespaces.

const envEdgeNode = "PT_MN_EDGE_NODE"

// edgeNodeConfig is what the parent hands a re-executed edge node (JSON in envEdgeNode).
type edgeNodeConfig struct {
	Name, Cluster string
	ClusterKey    []byte // ed25519 private key
	GossipKey     []byte
	Addr          string
	Seeds         []string
	ClusterCIDR   string
	DB, ConfList  string
	BaseConfList  []byte
	Socket        string
	// Resync is the controller's periodic re-read (0: 500ms); NoEvents leaves it the
	// only one (no reconcile on mesh changes: the behaviour before mesh.Node.Subscribe).
	Resync   time.Duration
	NoEvents bool
}

// edgeNodeMain runs one edge node until SIGTERM (the child side).
func edgeNodeMain(raw string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := runEdgeNode(raw, log); err != nil {
		log.Error("edge node", "err", err)
		return 1
	}
	return 0
}

func runEdgeNode(raw string, log *slog.Logger) error {
	var c edgeNodeConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log = log.With("node", c.Name)
	cidr, err := netip.ParsePrefix(c.ClusterCIDR)
	if err != nil {
		return err
	}
	key := ed25519.PrivateKey(c.ClusterKey)
	v, err := trust.NewVerifier(trust.Cluster{ID: c.Cluster, PublicKey: key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{cidr}})
	if err != nil {
		return err
	}
	id, err := trust.NewIdentity(c.Cluster, key, c.Name, time.Now(), time.Hour)
	if err != nil {
		return err
	}
	db, err := store.Open(ctx, c.DB)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := mesh.New(mesh.Options{NodeName: c.Name, ClusterID: c.Cluster, Identity: id, Verifier: v,
		BindAddr: c.Addr, BindPort: mesh.DefaultGossipPort, Seeds: c.Seeds, GossipKeys: [][]byte{c.GossipKey},
		DisableBeacons: true, Profile: "local", Refresh: 5 * time.Second, TTL: 30 * time.Second,
		ReconnectInterval: time.Second, Logger: log.With("part", "mesh")})
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(c.Addr)
	if err != nil {
		return err
	}
	if c.Resync == 0 {
		c.Resync = 500 * time.Millisecond
	}
	var changes chan struct{}
	if c.NoEvents {
		changes = make(chan struct{}) // never written: MeshEdge then subscribes nothing
	}
	ctrl, err := nodenet.NewEdge(nodenet.MeshEdge(nodenet.EdgeOptions{NodeName: c.Name, NodeIP: addr, ClusterCIDR: cidr,
		BlockSize: 24, DB: db, ConfListPath: c.ConfList, BaseConfList: c.BaseConfList, Changes: changes,
		Resync: c.Resync, Settle: 2 * time.Second, Logger: log}, n, c.Cluster))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(nodenet.StatusPath, ctrl.HTTPHandler())
	for _, p := range mesh.APIPaths {
		mux.Handle(p, n.HTTPHandler())
	}
	ln, err := net.Listen("unix", c.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return n.Run(gctx) })
	g.Go(func() error { return ctrl.Run(gctx) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { <-gctx.Done(); return srv.Close() })
	return g.Wait()
}

type edgeNode struct {
	*node
	sock string
	api  *localapi.Client
}

type edgeCluster struct {
	l          *lab
	id         string
	key        ed25519.PrivateKey
	gossip     []byte
	partitions map[string][]netip.Addr // node name -> addresses it cannot reach
	// resync and noEvents go to every node's edgeNodeConfig (zero: the defaults).
	resync   time.Duration
	noEvents bool
}

func newEdgeCluster(l *lab) *edgeCluster {
	key, err := trust.GenerateClusterKey()
	if err != nil {
		l.t.Fatal(err)
	}
	g, err := trust.GenerateGossipKey()
	if err != nil {
		l.t.Fatal(err)
	}
	return &edgeCluster{l: l, id: "edge-1", key: key, gossip: g}
}

// addNode makes the node namespace, cuts it from cut (a partition in force when it
// starts), and starts its edge node process joining seeds.
func (e *edgeCluster) addNode(name string, addr netip.Addr, cut []netip.Addr, seeds ...*edgeNode) *edgeNode {
	t := e.l.t
	t.Helper()
	n := &edgeNode{node: e.l.makeNode(name, addr)}
	if len(cut) > 0 {
		partition(t, n.node, cut)
	}
	n.sock = filepath.Join(n.dir, "edge.sock")
	cfg := edgeNodeConfig{Name: name, Cluster: e.id, ClusterKey: e.key, GossipKey: e.gossip, Addr: addr.String(),
		ClusterCIDR: e.l.cidr.String(), DB: n.db.Path(), ConfList: n.confList, BaseConfList: e.l.baseConfList(n.node), Socket: n.sock,
		Resync: e.resync, NoEvents: e.noEvents}
	for _, s := range seeds {
		cfg.Seeds = append(cfg.Seeds, netip.AddrPortFrom(s.addr, mesh.DefaultGossipPort).String())
	}
	raw, _ := json.Marshal(cfg)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.netns, exe)
	cmd.Env = append(os.Environ(), envEdgeNode+"="+string(raw))
	w := &tlogWriter{t: t}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s: edge node did not stop on SIGTERM", name)
		}
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	n.api = localapi.NewClient(n.sock)
	t.Cleanup(n.api.Close)
	eventually(t, 20*time.Second, name+" conflist written", func() error {
		select {
		case err := <-done:
			t.Fatalf("%s: edge node exited: %v", name, err)
		default:
		}
		st, err := n.status()
		if err == nil && st.ConfList == "" {
			err = fmt.Errorf("no conflist yet: %+v", st)
		}
		return err
	})
	return n
}

func (n *edgeNode) status() (localapi.NodeNet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return n.api.NodeNet(ctx) // what `patronus status` reads
}

func (n *edgeNode) block(t *testing.T) netip.Prefix {
	t.Helper()
	st, err := n.status()
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParsePrefix(st.Block)
}

// alive lists the mesh members n sees alive.
func (n *edgeNode) alive() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var ms []mesh.Member
	if err := n.api.Do(ctx, http.MethodGet, "/v1/members", &ms); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Status == "alive" {
			out = append(out, m.Name)
		}
	}
	return out, nil
}

// partition drops every packet between n and the addresses in cut (own table in n's
// namespace); heal removes it.
func partition(t *testing.T, n *node, cut []netip.Addr) {
	t.Helper()
	var set []string
	for _, a := range cut {
		set = append(set, a.String())
	}
	rules := fmt.Sprintf(`table inet pt-part {
	chain in { type filter hook input priority -300; ip saddr { %[1]s } drop; }
	chain out { type filter hook output priority -300; ip daddr { %[1]s } drop; }
}
`, strings.Join(set, ", "))
	cmd := exec.Command("ip", "netns", "exec", n.netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("partition %s: %v: %s", n.name, err, out)
	}
}

func heal(t *testing.T, n *node) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", n.netns, "nft", "delete", "table", "inet", "pt-part").CombinedOutput(); err != nil {
		t.Fatalf("heal %s: %v: %s", n.name, err, out)
	}
}

// TestEdgePartition: edge mode (no API server) over the real mesh. Two nodes share the
// mesh; the underlay splits them; a new node starts on each side (4 blocks in the
// cluster CIDR, two held; the names edge-x and edge-h are chosen so that both newcomers
// claim the same free block, alloc.Candidates being a hash of the name), each gets a
// pod; after the heal the conflict is detected through the signed
// claims, the newer claim loses and re-claims, its pod on the lost block is reported on
// /v1/nodenet (what `patronus status` shows), and pods on every node (the loser's new
// pod included) reach each other.
func TestEdgePartition(t *testing.T) {
	requireRoot(t)
	l := newLab(t, nil, "")
	l.cidr = netip.MustParsePrefix("10.246.0.0/22")
	pluginDir(t) // build the plugin before the clocks start
	ec := newEdgeCluster(l)
	addrA, addrB := netip.MustParseAddr("192.168.77.21"), netip.MustParseAddr("192.168.77.22")
	addrX, addrY := netip.MustParseAddr("192.168.77.23"), netip.MustParseAddr("192.168.77.24")
	a := ec.addNode("edge-a", addrA, nil)
	b := ec.addNode("edge-b", addrB, nil, a)
	eventually(t, 15*time.Second, "a and b hold distinct blocks and route each other", func() error {
		sa, err := a.status()
		if err != nil {
			return err
		}
		sb, err := b.status()
		if err != nil {
			return err
		}
		if sa.Block == sb.Block || sa.Peers != 1 || sb.Peers != 1 {
			return fmt.Errorf("a %s peers %d, b %s peers %d", sa.Block, sa.Peers, sb.Block, sb.Peers)
		}
		return nil
	})
	blockA, blockB := a.block(t), b.block(t)

	// Split: {a, x} | {b, y}.
	partition(t, a.node, []netip.Addr{addrB, addrY})
	partition(t, b.node, []netip.Addr{addrA, addrX})
	eventually(t, 20*time.Second, "each side sees the other failed", func() error {
		for _, n := range []*edgeNode{a, b} {
			if al, err := n.alive(); err != nil || len(al) != 1 {
				return fmt.Errorf("%s sees alive %v (%v)", n.name, al, err)
			}
		}
		return nil
	})
	x := ec.addNode("edge-x", addrX, []netip.Addr{addrB, addrY}, a)
	time.Sleep(20 * time.Millisecond) // y's claim is strictly newer than x's
	y := ec.addNode("edge-h", addrY, []netip.Addr{addrA, addrX}, b)
	all := []*edgeNode{a, b, x, y}
	pods := map[string]*pod{}
	for _, n := range all {
		pods[n.name] = l.addPod(n.node, n.name+"-p0")
	}
	// The block each newcomer's pod got its address from (it may have re-claimed once
	// at start, before any pod, had it claimed before hearing its side's claims).
	split := map[string]netip.Prefix{}
	for _, n := range []*edgeNode{x, y} {
		split[n.name] = n.block(t)
		if !split[n.name].Contains(pods[n.name].ip) {
			t.Fatalf("%s pod %s outside its block %s", n.name, pods[n.name].ip, split[n.name])
		}
	}
	t.Logf("during the partition: a %s, b %s, x %s, y %s", blockA, blockB, split["edge-x"], split["edge-h"])

	for _, n := range all {
		heal(t, n.node)
	}
	start := time.Now()
	lastWhy := ""
	eventually(t, 30*time.Second, "mesh whole and blocks distinct after the heal", func() (err error) {
		defer func() { // log each new reason for waiting (convergence shows in the log)
			if err != nil && err.Error() != lastWhy {
				lastWhy = err.Error()
				t.Logf("after the heal (%s): %s", time.Since(start).Round(100*time.Millisecond), lastWhy)
			}
		}()
		seen := map[string]string{}
		for _, n := range all {
			al, err := n.alive()
			if err != nil || len(al) != 4 {
				return fmt.Errorf("%s sees alive %v (%v)", n.name, al, err)
			}
			st, err := n.status()
			if err != nil {
				return err
			}
			if o, dup := seen[st.Block]; dup {
				return fmt.Errorf("%s and %s hold %s", o, n.name, st.Block)
			}
			seen[st.Block] = n.name
			if st.Peers != 3 {
				return fmt.Errorf("%s peers %d", n.name, st.Peers)
			}
		}
		return nil
	})
	t.Logf("conflict resolved %s after the heal", time.Since(start).Round(100*time.Millisecond))
	if a.block(t) != blockA || b.block(t) != blockB {
		t.Fatalf("an older claim lost: a %s (was %s), b %s (was %s)", a.block(t), blockA, b.block(t), blockB)
	}
	var losers []*edgeNode
	for _, n := range []*edgeNode{x, y} {
		st, err := n.status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Block == split[n.name].String() {
			if len(st.Lost) != 0 {
				t.Fatalf("%s kept its block but reports lost pods %+v", n.name, st.Lost)
			}
			continue
		}
		losers = append(losers, n)
		if len(st.Lost) != 1 || st.Lost[0].Name != n.name+"-p0" || st.Lost[0].Block != split[n.name].String() ||
			len(st.Lost[0].IPs) != 1 || !strings.HasPrefix(st.Lost[0].IPs[0], pods[n.name].ip.String()+"/") {
			t.Fatalf("%s re-claimed %s → %s but reports lost pods %+v", n.name, split[n.name], st.Block, st.Lost)
		}
	}
	if split["edge-x"] != split["edge-h"] || len(losers) != 1 || losers[0] != y {
		t.Fatalf("want x and y on one block during the split and y (newer) the only loser: x %s, y %s, losers %d", split["edge-x"], split["edge-h"], len(losers))
	}

	// Pods on the winners' blocks and a new pod on each loser reach each other.
	var mesh []*pod
	for _, n := range all {
		p := pods[n.name]
		for _, lo := range losers {
			if lo == n {
				p = l.addPod(n.node, n.name+"-p1")
				if !n.block(t).Contains(p.ip) {
					t.Fatalf("%s new pod %s outside its new block %s", n.name, p.ip, n.block(t))
				}
			}
		}
		serveTCP(t, p.netns, p.ip, 8080)
		mesh = append(mesh, p)
	}
	eventually(t, 10*time.Second, "routes programmed", func() error {
		for _, n := range all {
			if rs := ownedRoutes(t, n.node); len(rs) != 3 {
				return fmt.Errorf("%s routes %v", n.name, rs)
			}
		}
		return nil
	})
	meshCheck(t, mesh)
}
