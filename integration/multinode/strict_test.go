package multinode

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/nodenet"
)

// Strict node encryption: node 1 encrypts, node 2 publishes no key. With strict off,
// node 1's pods reach node 2's pods in the clear (the underlay counter sees frames with
// a node-1 pod source: it can see them); with strict on they get no answer, node 1's
// strict chain counts the drops, the status says so, and not one frame with a node-1 pod
// source crosses the underlay, while a non-pod address (node 2's underlay address) is
// still reached. Once node 2 has a key, the same traffic flows, encrypted, under strict.
func TestNodeEncryptionStrict(t *testing.T) {
	requireEncryptionTools(t)
	cluster := k8senv.Start(t)
	pluginDir(t)
	l := newLab(t, cluster, "kube-system")
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort)

	b1, b2 := netip.MustParsePrefix("10.244.151.0/24"), netip.MustParsePrefix("10.244.152.0/24")
	fromNode1 := sourceCounter(t, l, b1)
	l.encrypt = nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	n1 := l.makeNodeWith("s-node-1", netip.MustParseAddr("192.168.77.31"), b1.String(), nil)
	n2 := l.makeNodeWith("s-node-2", netip.MustParseAddr("192.168.77.32"), b2.String(), &nodenet.Encrypt{Mode: nodenet.EncryptionNone})
	p1 := l.addPod(n1, "s-node-1-p0")
	p2 := l.addPod(n2, "s-node-2-p0")
	serveTCP(t, p1.netns, p1.ip, 8080)
	serveTCP(t, p2.netns, p2.ip, 8080)

	plainTo := func(n *node, peer *node) {
		t.Helper()
		eventually(t, 30*time.Second, n.name+" routes "+peer.name+" in the clear", func() error {
			if got, want := ownedRoutes(t, n)[peer.ctrl.Status().Block.String()], "via "+peer.addr.String()+" dev eth0"; got != want {
				return fmt.Errorf("route %q, want %q", got, want)
			}
			return nil
		})
	}

	// Strict off: plaintext flows, and the counter sees it.
	plainTo(n1, n2)
	before := fromNode1()
	meshCheck(t, []*pod{p1, p2})
	if got := fromNode1() - before; got == 0 {
		t.Fatal("strict off: no frame with a node-1 pod source on the underlay: the counter cannot see plaintext")
	}
	if st := n1.ctrl.Status(); st.Strict || st.StrictDropped != 0 {
		t.Fatalf("strict off: status strict %v dropped %d", st.Strict, st.StrictDropped)
	}

	// Strict on (node 1 restarts with it): no answer, nothing in the clear, drops counted.
	l.stop(n1)
	n1.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard, Strict: true}
	l.start(n1)
	eventually(t, 30*time.Second, "node 1 reports node 2 dropped", func() error {
		st := n1.ctrl.Status()
		if !st.Strict {
			return fmt.Errorf("status strict false (last error %q)", st.LastError)
		}
		if len(st.PeerStates) != 1 || st.PeerStates[0].Node != n2.name || st.PeerStates[0].Encrypted ||
			st.PeerStates[0].Dropped != nodenet.StrictDropped {
			return fmt.Errorf("peer states %+v", st.PeerStates)
		}
		return nil
	})
	plainTo(n1, n2) // the plain route stays: strict drops, it does not unroute
	before = fromNode1()
	for _, pair := range [][2]*pod{{p1, p2}, {p2, p1}} {
		if err := ping(pair[0].netns, pair[1].ip); err == nil {
			t.Errorf("strict: %s → %s ping answered", pair[0].name, pair[1].name)
		}
		if src, err := dialTCP(pair[0].netns, pair[1].ip, 8080); err == nil {
			t.Errorf("strict: %s → %s TCP answered (seen from %s)", pair[0].name, pair[1].name, src)
		}
	}
	if got := fromNode1() - before; got != 0 {
		t.Errorf("strict: %d frames with a node-1 pod source crossed the underlay in the clear", got)
	}
	if err := ping(p1.netns, n2.addr); err != nil {
		t.Errorf("strict: a non-pod address (node 2's underlay address) must stay reachable: %v", err)
	}
	eventually(t, 30*time.Second, "node 1 counts the drops", func() error {
		if st := n1.ctrl.Status(); st.StrictDropped == 0 {
			return fmt.Errorf("strict dropped %d", st.StrictDropped)
		}
		return nil
	})
	if rs := nftRuleset(t, n1.netns); !strings.Contains(rs, "chain "+nodenet.DefaultStrictChain) {
		t.Fatalf("no strict chain on node 1:\n%s", rs)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Node 2 gets a key: the traffic flows again, encrypted, under strict.
	l.stop(n2)
	n2.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	l.start(n2)
	encryptedTo(t, n1, []*node{n1, n2})
	encryptedTo(t, n2, []*node{n1, n2})
	plain0, wg0 := count()
	before = fromNode1()
	meshCheck(t, []*pod{p1, p2})
	plain1, wg1 := count()
	if got := fromNode1() - before; got != 0 || plain1 != plain0 {
		t.Errorf("both keyed: %d frames with a node-1 pod source, %d with any pod source in the clear", got, plain1-plain0)
	}
	if wg1 == wg0 {
		t.Error("both keyed: no WireGuard frame on the underlay")
	}
	if st := n1.ctrl.Status(); !st.Strict || len(st.PeerStates) != 1 || st.PeerStates[0].Dropped != "" {
		t.Errorf("both keyed: status strict %v peers %+v", st.Strict, st.PeerStates)
	}

	// Strict off again: node 1's chain goes.
	l.stop(n1)
	n1.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	l.start(n1)
	eventually(t, 30*time.Second, "strict chain removed", func() error {
		if rs := nftRuleset(t, n1.netns); strings.Contains(rs, nodenet.DefaultStrictChain) {
			return fmt.Errorf("still there:\n%s", rs)
		}
		return nil
	})
}

// makeNodeWith is addNode with node-level encryption enc (nil: the lab's).
func (l *lab) makeNodeWith(name string, addr netip.Addr, podCIDR string, enc *nodenet.Encrypt) *node {
	l.t.Helper()
	saved := l.encrypt
	if enc != nil {
		l.encrypt = *enc
	}
	defer func() { l.encrypt = saved }()
	n := l.addNode(name, addr, podCIDR)
	n.encrypt = enc
	return n
}

// sourceCounter counts, on the underlay bridge, IPv4 frames whose source is in src (in a
// table of its own, beside underlayCounters').
func sourceCounter(t *testing.T, l *lab, src netip.Prefix) func() uint64 {
	t.Helper()
	rules := fmt.Sprintf(`table bridge ptstricttest {
	chain counts {
		type filter hook forward priority 0; policy accept;
		ip saddr %s counter comment "src"
	}
}
`, src)
	cmd := exec.Command("ip", "netns", "exec", l.under, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("underlay counter: %v: %s", err, out)
	}
	re := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "src"`)
	return func() uint64 {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", l.under, "nft", "list", "table", "bridge", "ptstricttest").CombinedOutput()
		if err != nil {
			t.Fatalf("read underlay counter: %v: %s", err, out)
		}
		m := re.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("no counter in:\n%s", out)
		}
		n, _ := strconv.ParseUint(m[1], 10, 64)
		return n
	}
}

func nftRuleset(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset in %s: %v: %s", ns, err, out)
	}
	return string(out)
}

// TestEdgeNodeEncryptionStrict: the same in edge mode (no API server; the gossip view in
// memory, as in TestEdgeNodeEncryption): node 1 strict, node 2 without a key (its claim
// carries none). Node 1's pods get no answer from node 2's and send nothing in the clear;
// a non-pod address (node 2's underlay address) stays reachable.
func TestEdgeNodeEncryptionStrict(t *testing.T) {
	requireEncryptionTools(t)
	pluginDir(t)
	l := newLab(t, nil, "")
	var mu sync.Mutex
	view := map[string]nodenet.EdgeMember{}
	members := func() []nodenet.EdgeMember {
		mu.Lock()
		defer mu.Unlock()
		var out []nodenet.EdgeMember
		for _, m := range view {
			out = append(out, m)
		}
		return out
	}
	start := func(name string, addr netip.Addr, enc nodenet.Encrypt) *node {
		n := l.makeNode(name, addr)
		m := nodenet.EdgeMember{Name: name, Addr: addr}
		if enc.Mode == nodenet.EncryptionWireGuard {
			k, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				t.Fatal(err)
			}
			enc.Key, m.Key = k, k.PublicKey().String()
		}
		mu.Lock()
		view[name] = m
		mu.Unlock()
		e, err := nodenet.NewEdge(nodenet.EdgeOptions{NodeName: name, NodeIP: addr, ClusterCIDR: l.cidr, DB: n.db,
			ConfListPath: n.confList, BaseConfList: l.baseConfList(n), NetNSPath: nsPath(n.netns),
			Members: members, Publish: func(claim string) error {
				mu.Lock()
				defer mu.Unlock()
				m := view[name]
				m.Claim = claim
				view[name] = m
				return nil
			},
			Resync: 500 * time.Millisecond, Settle: -1, Logger: testLogger(t, name), Encrypt: enc})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		n.ctrl, n.cancel, n.done = e.Controller, cancel, make(chan error, 1)
		go func() { n.done <- e.Run(ctx) }()
		t.Cleanup(func() { l.stop(n) })
		select {
		case <-e.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no conflist after 30s: %+v", name, e.Status())
		}
		return n
	}
	n1 := start("se-node-1", netip.MustParseAddr("192.168.77.51"), nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard, Strict: true})
	n2 := start("se-node-2", netip.MustParseAddr("192.168.77.52"), nodenet.Encrypt{})
	eventually(t, 30*time.Second, "node 1 reports node 2 dropped", func() error {
		st := n1.ctrl.Status()
		if !st.Strict || len(st.PeerStates) != 1 || st.PeerStates[0].Node != n2.name || st.PeerStates[0].Dropped != nodenet.StrictDropped {
			return fmt.Errorf("strict %v peer states %+v (last error %q)", st.Strict, st.PeerStates, st.LastError)
		}
		return nil
	})
	fromNode1 := sourceCounter(t, l, n1.ctrl.Status().Block)
	p1, p2 := l.addPod(n1, "se-node-1-p0"), l.addPod(n2, "se-node-2-p0")
	serveTCP(t, p2.netns, p2.ip, 8080)
	if err := ping(p1.netns, p2.ip); err == nil {
		t.Error("strict: ping answered")
	}
	if src, err := dialTCP(p1.netns, p2.ip, 8080); err == nil {
		t.Errorf("strict: TCP answered (seen from %s)", src)
	}
	if got := fromNode1(); got != 0 {
		t.Errorf("strict: %d frames with a node-1 pod source on the underlay", got)
	}
	if err := ping(p1.netns, n2.addr); err != nil {
		t.Errorf("strict: node 2's underlay address (not a pod) must stay reachable: %v", err)
	}
	eventually(t, 30*time.Second, "node 1 counts the drops", func() error {
		if st := n1.ctrl.Status(); st.StrictDropped == 0 {
			return fmt.Errorf("strict dropped %d", st.StrictDropped)
		}
		return nil
	})
}
