package multinode

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/nodenet"
)

// TestEdgeNodeEncryption: edge mode (no API server) with node encryption. Three
// EdgeControllers in their node namespaces share a gossip view kept in memory (what
// nodenet.MeshClaims gives from the signed podblock claims: address, claim and the key
// the claim carries); each node's key is known before it starts, as MeshEdge loads it
// before the claim is published. Every pod reaches every other over WireGuard, and a
// node that leaves the view loses its peer and routes everywhere.
func TestEdgeNodeEncryption(t *testing.T) {
	requireEncryptionTools(t)
	pluginDir(t)
	l := newLab(t, nil, "")
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort)

	var mu sync.Mutex
	view := map[string]nodenet.EdgeMember{} // the gossip view: alive members
	members := func() []nodenet.EdgeMember {
		mu.Lock()
		defer mu.Unlock()
		var out []nodenet.EdgeMember
		for _, m := range view {
			out = append(out, m)
		}
		return out
	}
	start := func(name string, addr netip.Addr) *node {
		n := l.makeNode(name, addr)
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		view[name] = nodenet.EdgeMember{Name: name, Addr: addr, Key: k.PublicKey().String()}
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
			Resync: 500 * time.Millisecond, Settle: -1, Logger: testLogger(t, name),
			Encrypt: nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard, Key: k}})
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
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, start(fmt.Sprintf("ee-node-%d", i), netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 40+i))))
	}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
		checkWGDevice(t, n)
	}
	var pods []*pod
	for _, n := range nodes {
		p := l.addPod(n, n.name+"-p0")
		serveTCP(t, p.netns, p.ip, 8080)
		pods = append(pods, p)
	}
	meshCheck(t, pods)
	if plain, wg := count(); plain != 0 || wg == 0 {
		t.Fatalf("underlay: %d plaintext pod frames, %d WireGuard frames; want 0 and some", plain, wg)
	}

	// Node 3 leaves the view (failed or left: MeshClaims lists alive members only).
	gone := nodes[2]
	b3 := gone.ctrl.Status().Block
	l.stop(gone)
	mu.Lock()
	delete(view, gone.name)
	mu.Unlock()
	for _, n := range nodes[:2] {
		encryptedTo(t, n, nodes[:2])
		eventually(t, 30*time.Second, n.name+": node 3's peer gone", func() error {
			if r, ok := ownedRoutes(t, n)[b3.String()]; ok {
				return fmt.Errorf("route %s %s", b3, r)
			}
			if st := n.ctrl.Status(); st.WireGuard == nil || st.WireGuard.Peers != 1 {
				return fmt.Errorf("wireguard %+v", st.WireGuard)
			}
			return nil
		})
	}
	meshCheck(t, pods[:2])
}
