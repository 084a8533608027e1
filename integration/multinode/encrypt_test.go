package multinode

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/nodenet"
)

// Node-to-node encryption: three nodes with encryption on reach each other's pods only
// through WireGuard (the underlay bridge counts no frame with a pod source address, and
// UDP to the WireGuard port); a fourth node joins and leaves; a node turned back to
// "none" is routed in the clear again by the others (and the counter sees it, so it can
// see plaintext).
func TestNodeEncryption(t *testing.T) {
	requireEncryptionTools(t)
	cluster := k8senv.Start(t)
	pluginDir(t)
	l := newLab(t, cluster, "kube-system")
	l.encrypt = nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard} // kernel WireGuard if present, else userspace
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort)

	cidr := func(i int) string { return fmt.Sprintf("10.244.%d.0/24", 120+i) }
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, l.addNode(fmt.Sprintf("e-node-%d", i), netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 20+i)), cidr(i)))
	}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
		checkWGDevice(t, n)
	}

	var pods []*pod
	for _, n := range nodes {
		for j := range 2 {
			p := l.addPod(n, fmt.Sprintf("%s-p%d", n.name, j))
			serveTCP(t, p.netns, p.ip, 8080)
			pods = append(pods, p)
		}
	}
	plain0, wg0 := count()
	meshCheck(t, pods) // TCP and ICMP, every pair, source address preserved
	plain1, wg1 := count()
	t.Logf("underlay during the pod mesh: %d frames with a pod source address, %d WireGuard frames", plain1-plain0, wg1-wg0)
	if plain1 != 0 {
		t.Fatalf("%d frames with a pod source address crossed the underlay in the clear", plain1)
	}
	if wg1-wg0 == 0 {
		t.Fatal("no WireGuard frame on the underlay: the pod traffic did not go through WireGuard")
	}
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.name+" handshakes", func() error {
			st := n.ctrl.Status()
			for _, p := range st.PeerStates {
				if p.LastHandshake.IsZero() || p.RxBytes == 0 {
					return fmt.Errorf("peer %s: no handshake or nothing received: %+v", p.Node, p)
				}
			}
			return nil
		})
	}

	// A fourth node joins: encrypted routes everywhere, its pod reaches and is reached.
	n4 := l.addNode("e-node-4", netip.MustParseAddr("192.168.77.24"), cidr(4))
	all := append(append([]*node(nil), nodes...), n4)
	for _, n := range all {
		encryptedTo(t, n, all)
	}
	p4 := l.addPod(n4, "e-node-4-p0")
	serveTCP(t, p4.netns, p4.ip, 8080)
	meshCheck(t, []*pod{p4, pods[0], pods[2], pods[4]})
	if plain, _ := count(); plain != 0 {
		t.Fatalf("%d plaintext pod frames on the underlay after node 4 joined", plain)
	}

	// It leaves: its peer and its routes go on every node.
	b4 := n4.ctrl.Status().Block
	l.stop(n4)
	if err := l.client.CoreV1().Nodes().Delete(context.Background(), n4.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
		eventually(t, 30*time.Second, n.name+": node 4 gone", func() error {
			if r, ok := ownedRoutes(t, n)[b4.String()]; ok {
				return fmt.Errorf("route %s %s", b4, r)
			}
			if st := n.ctrl.Status(); st.WireGuard == nil || st.WireGuard.Peers != 2 {
				return fmt.Errorf("wireguard %+v", st.WireGuard)
			}
			return nil
		})
	}

	// Node 3 restarts with encryption off: its device and published key go, the others
	// route it in the clear again (and say so), and everything still reaches everything.
	n3 := nodes[2]
	l.stop(n3)
	n3.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionNone}
	l.start(n3)
	eventually(t, 30*time.Second, "node 3 without WireGuard", func() error {
		if _, err := handleIn(t, n3.netns).LinkByName(nodenet.WGDevice); err == nil {
			return fmt.Errorf("%s still on node 3", nodenet.WGDevice)
		}
		obj, err := l.client.CoreV1().Nodes().Get(context.Background(), n3.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if k, ok := obj.Annotations[nodenet.AnnotationWGKey]; ok {
			return fmt.Errorf("annotation %s=%s still on the Node", nodenet.AnnotationWGKey, k)
		}
		if st := n3.ctrl.Status(); st.Encryption != nodenet.EncryptionNone || st.WireGuard != nil {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	b3 := n3.ctrl.Status().Block
	for _, n := range nodes[:2] {
		eventually(t, 30*time.Second, n.name+" routes node 3 in the clear", func() error {
			if got, want := ownedRoutes(t, n)[b3.String()], "via "+n3.addr.String()+" dev eth0"; got != want {
				return fmt.Errorf("route %q, want %q", got, want)
			}
			for _, p := range n.ctrl.Status().PeerStates {
				if p.Node == n3.name && (p.Encrypted || p.Reason != nodenet.PlainNoKey) {
					return fmt.Errorf("peer state %+v", p)
				}
			}
			return nil
		})
	}
	before, _ := count()
	meshCheck(t, pods[:2+2]) // nodes 1 and 2 only: still encrypted
	if mid, _ := count(); mid != before {
		t.Fatalf("%d plaintext pod frames between nodes 1 and 2 (both still encrypting)", mid-before)
	}
	meshCheck(t, pods)
	if after, _ := count(); after == before {
		t.Fatal("the underlay counter saw no plaintext pod frame to or from the unencrypted node 3: it could not see any")
	}
}

// encryptedTo waits until n routes every other node's block over the WireGuard device
// and reports each peer encrypted.
func encryptedTo(t *testing.T, n *node, all []*node) {
	t.Helper()
	eventually(t, 30*time.Second, n.name+" encrypted routes", func() error {
		rs := ownedRoutes(t, n)
		for _, m := range all {
			if m == n {
				continue
			}
			b := m.ctrl.Status().Block.String()
			if !strings.HasSuffix(rs[b], " dev "+nodenet.WGDevice) {
				return fmt.Errorf("route to %s (%s) = %q, want dev %s (all %v)", b, m.name, rs[b], nodenet.WGDevice, rs)
			}
		}
		if len(rs) != len(all)-1 {
			return fmt.Errorf("routes %v", rs)
		}
		st := n.ctrl.Status()
		if st.Encryption != nodenet.EncryptionWireGuard || st.WireGuard == nil || st.WireGuard.Error != "" {
			return fmt.Errorf("status %+v", st)
		}
		if len(st.PeerStates) != len(all)-1 {
			return fmt.Errorf("peer states %+v", st.PeerStates)
		}
		for _, p := range st.PeerStates {
			if !p.Encrypted {
				return fmt.Errorf("peer %s not encrypted: %s", p.Node, p.Reason)
			}
		}
		return nil
	})
}

// checkWGDevice: n's device has the underlay MTU − 80 and its block's network address.
func checkWGDevice(t *testing.T, n *node) {
	t.Helper()
	h := handleIn(t, n.netns)
	l, err := h.LinkByName(nodenet.WGDevice)
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	eth, _ := h.LinkByName("eth0")
	if got, want := l.Attrs().MTU, eth.Attrs().MTU-wg.Overhead; got != want {
		t.Fatalf("%s: %s MTU %d, want %d", n.name, nodenet.WGDevice, got, want)
	}
	addrs, err := h.AddrList(l, 2 /* AF_INET */)
	if err != nil {
		t.Fatal(err)
	}
	want := nodenet.VTEPAddr(n.ctrl.Status().Block).String() + "/32"
	if len(addrs) != 1 || addrs[0].IPNet.String() != want {
		t.Fatalf("%s: %s addresses %v, want %s", n.name, nodenet.WGDevice, addrs, want)
	}
	if st := n.ctrl.Status(); st.WireGuard.MTU != l.Attrs().MTU || st.WireGuard.Port != nodenet.WGPort {
		t.Fatalf("%s: status %+v", n.name, st.WireGuard)
	}
}

// underlayCounters counts, on the underlay bridge (bridge family, forward hook: every
// frame between two nodes), IPv4 frames whose source is in pods (or in one of more) and
// UDP frames to port.
func underlayCounters(t *testing.T, l *lab, pods netip.Prefix, port int, more ...netip.Prefix) func() (plain, wg uint64) {
	t.Helper()
	srcs := []string{pods.String()}
	for _, p := range more {
		srcs = append(srcs, p.String())
	}
	rules := fmt.Sprintf(`table bridge ptwgtest {
	chain counts {
		type filter hook forward priority 0; policy accept;
		ip saddr { %s } counter comment "plain"
		udp dport %d counter comment "wg"
	}
}
`, strings.Join(srcs, ", "), port)
	cmd := exec.Command("ip", "netns", "exec", l.under, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("underlay counters: %v: %s", err, out)
	}
	re := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "(\w+)"`)
	return func() (uint64, uint64) {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", l.under, "nft", "list", "table", "bridge", "ptwgtest").CombinedOutput()
		if err != nil {
			t.Fatalf("read underlay counters: %v: %s", err, out)
		}
		got := map[string]uint64{}
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			got[m[2]], _ = strconv.ParseUint(m[1], 10, 64)
		}
		return got["plain"], got["wg"]
	}
}
