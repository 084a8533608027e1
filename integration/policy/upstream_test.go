package policy_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/policy/netpolcases"
)

// Probe timeouts: an expected denial waits briefly (nothing comes back), an expected
// pass gets room. A mismatch is probed again (upstream re-polls too) before it counts.
const (
	denyTimeout  = 400 * time.Millisecond
	allowTimeout = 2 * time.Second
	probeRounds  = 3
	// settleQuiet: after a change, the agent has synced at least once and then stayed
	// quiet this long (every informer event causes a sync, so the change is in).
	settleQuiet = 75 * time.Millisecond
)

// upstreamScenarios replays the 49 scenarios of the upstream NetworkPolicy e2e suite
// (package netpolcases) on this node: the policies go to the API server, the agent
// enforces them, and every ordered pair of the scenario's pods is probed through the
// destination's Service IP on the scenario's protocol and port, the matrix compared with
// the expected one. One set of pods (the union of all scenarios') serves every scenario;
// between scenarios all policies are deleted and changed labels restored.
func upstreamScenarios(t *testing.T, n *node) {
	list := netpolcases.Scenarios(func(l string) string { return n.prefix + "-" + l })
	if len(list) != 49 {
		t.Fatalf("%d scenarios, want 49", len(list))
	}
	for _, p := range netpolcases.AllPods(list) {
		if n.pods[p] == nil || !n.svc[p].IsValid() {
			t.Fatalf("pod %s or its Service missing", p)
		}
	}
	cl := &upCluster{n: n}
	// Start clean: earlier subtests delete their policies, but a failed one may not have.
	cl.t = t
	n.settle(t, cl.reset)
	start := time.Now()
	for _, sc := range list {
		t.Run(fmt.Sprintf("%02d-%s", sc.Num, strings.ReplaceAll(sc.Name, " ", "-")), func(t *testing.T) {
			cl.t = t
			defer n.settle(t, cl.reset)
			for si, st := range sc.Steps {
				n.settle(t, func() bool { st.Do(cl); return true })
				for _, p := range st.Probes {
					n.matrix(t, fmt.Sprintf("step %d", si+1), sc.Pods, p)
				}
			}
		})
	}
	t.Logf("49 upstream scenarios on datapath %s in %v", n.prefix, time.Since(start).Round(time.Millisecond))
}

// settle runs do (API changes; it reports whether it changed anything) and returns once
// the agent has applied them.
func (n *node) settle(t *testing.T, do func() bool) {
	t.Helper()
	n.syncMu.Lock()
	before := n.syncs
	n.syncMu.Unlock()
	if !do() {
		return
	}
	done := time.Now()
	deadline := done.Add(15 * time.Second)
	for {
		n.syncMu.Lock()
		syncs, at := n.syncs, n.syncAt
		n.syncMu.Unlock()
		if at.Before(done) {
			at = done
		}
		if syncs > before && time.Since(at) >= settleQuiet {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not apply the change within 15s (syncs %d → %d)", before, syncs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// matrix probes every ordered pair of distinct pods (logical names) through the
// destination's Service IP and compares with the expectation.
func (n *node) matrix(t *testing.T, stage string, pods []string, pr netpolcases.Probe) {
	t.Helper()
	type pair struct{ from, to string }
	var todo []pair
	for _, f := range pods {
		for _, to := range pods {
			if f != to {
				todo = append(todo, pair{f, to})
			}
		}
	}
	got := map[pair]bool{}
	for round := 1; round <= probeRounds && len(todo) > 0; round++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var again []pair
		for _, p := range todo {
			wg.Go(func() {
				want := pr.Expect.Allowed(p.from, p.to)
				ok, err := n.probeService(n.pods[p.from], n.pods[p.to], pr.Protocol, uint16(pr.Port), want)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("%s: probe %s -> %s: %v", stage, p.from, p.to, err)
				}
				got[p] = ok
				if ok != want {
					again = append(again, p)
				}
			})
		}
		wg.Wait()
		if len(again) > 0 && round < probeRounds {
			t.Logf("%s: %s/%d: %d of %d probes differ in round %d, probing them again", stage, pr.Protocol, pr.Port, len(again), len(todo), round)
			time.Sleep(200 * time.Millisecond)
		}
		todo = again
	}
	if len(todo) > 0 {
		var b strings.Builder
		for _, p := range todo {
			fmt.Fprintf(&b, "\n  %s -> %s: want allowed=%v, got %v", p.from, p.to, pr.Expect.Allowed(p.from, p.to), got[p])
		}
		t.Errorf("%s: %s/%d through Service IPs: %d mismatches (expectation %q):%s", stage, pr.Protocol, pr.Port, len(todo), pr.Expect, b.String())
		return
	}
	allowed := 0
	for _, v := range got {
		if v {
			allowed++
		}
	}
	t.Logf("%s: %s/%d matrix as expected (%d pairs, %d allowed)", stage, pr.Protocol, pr.Port, len(got), allowed)
}

// probeService sends proto traffic from src to dst's Service IP:port and reports whether
// it arrived (TCP, UDP: echoed back; SCTP: seen by a packet socket in dst).
func (n *node) probeService(src, dst *pod, proto corev1.Protocol, port uint16, want bool) (bool, error) {
	timeout := denyTimeout
	if want {
		timeout = allowTimeout
	}
	to := netip.AddrPortFrom(n.svc[dst.String()], port)
	switch proto {
	case corev1.ProtocolTCP:
		return src.probe("tcp", to, timeout), nil
	case corev1.ProtocolUDP:
		return src.probe("udp", to, timeout), nil
	case corev1.ProtocolSCTP:
		return sctpDelivered(src, dst, to, timeout)
	}
	return false, fmt.Errorf("protocol %s", proto)
}

var sctpPort atomic.Uint32

// sctpDelivered sends an SCTP INIT (valid CRC32c, so conntrack and the Service DNAT take
// it) from src to `to` on a raw IP socket — this kernel has no SCTP sockets — and reports
// whether dst's eth0 received it from src's address with the probe's own source port.
func sctpDelivered(src, dst *pod, to netip.AddrPort, timeout time.Duration) (bool, error) {
	var pfd int
	err := dst.netns.Do(func(ns.NetNS) error {
		var err error
		pfd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			unix.Close(pfd)
			return err
		}
		if err := unix.Bind(pfd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.Attrs().Index}); err != nil {
			unix.Close(pfd)
			return err
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("packet socket in %s: %w", dst, err)
	}
	defer unix.Close(pfd)
	sport := uint16(20000 + sctpPort.Add(1)%40000)
	pkt := make([]byte, 32)
	binary.BigEndian.PutUint16(pkt[0:], sport)
	binary.BigEndian.PutUint16(pkt[2:], to.Port())
	// Verification tag 0 (an INIT's), then the INIT chunk: type 1, length 20, initiate
	// tag, a_rwnd, outbound and inbound streams, initial TSN.
	pkt[12] = 1
	binary.BigEndian.PutUint16(pkt[14:], 20)
	binary.BigEndian.PutUint32(pkt[16:], 0x5eed0000|uint32(sport))
	binary.BigEndian.PutUint32(pkt[20:], 65535)
	binary.BigEndian.PutUint16(pkt[24:], 1)
	binary.BigEndian.PutUint16(pkt[26:], 1)
	binary.BigEndian.PutUint32(pkt[28:], 1)
	binary.LittleEndian.PutUint32(pkt[8:], crc32.Checksum(pkt, crc32.MakeTable(crc32.Castagnoli)))
	err = src.netns.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: to.Addr().As4()})
	})
	if err != nil {
		return false, fmt.Errorf("raw SCTP send from %s: %w", src, err)
	}
	srcIP := src.ip.As4()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		tv := unix.NsecToTimeval(int64(left))
		_ = unix.SetsockoptTimeval(pfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		m, _, err := unix.Recvfrom(pfd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return false, err
		}
		if m < 24 || buf[9] != unix.IPPROTO_SCTP || [4]byte(buf[12:16]) != srcIP {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		if m >= ihl+4 && binary.BigEndian.Uint16(buf[ihl:]) == sport && binary.BigEndian.Uint16(buf[ihl+2:]) == to.Port() {
			return true, nil
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// upCluster is the node's cluster as netpolcases sees it.
type upCluster struct {
	t *testing.T
	n *node
	// labels added by the scenario, removed by reset: "ns:y" / "pod:x/b" → keys
	labelled map[string][]string
}

func (c *upCluster) Apply(pols ...networkingv1.NetworkPolicy) {
	c.t.Helper()
	ctx := context.Background()
	for _, p := range pols {
		np := c.n.k.NetworkingV1().NetworkPolicies(p.Namespace)
		old, err := np.Get(ctx, p.Name, metav1.GetOptions{})
		switch {
		case err == nil:
			p.ResourceVersion = old.ResourceVersion
			_, err = np.Update(ctx, &p, metav1.UpdateOptions{})
		case apierrors.IsNotFound(err):
			_, err = np.Create(ctx, &p, metav1.CreateOptions{})
		}
		if err != nil {
			c.t.Fatalf("apply NetworkPolicy %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

func (c *upCluster) DeleteAllPolicies() { c.deletePolicies() }

// deletePolicies deletes the NetworkPolicies of x, y and z and says whether there were any.
func (c *upCluster) deletePolicies() bool {
	c.t.Helper()
	ctx := context.Background()
	found := false
	for _, lns := range netpolcases.Namespaces {
		np := c.n.k.NetworkingV1().NetworkPolicies(c.n.prefix + "-" + lns)
		l, err := np.List(ctx, metav1.ListOptions{})
		if err != nil {
			c.t.Fatalf("list the NetworkPolicies of %s: %v", lns, err)
		}
		for _, p := range l.Items {
			if err := np.Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				c.t.Fatalf("delete NetworkPolicy %s/%s: %v", p.Namespace, p.Name, err)
			}
			found = true
		}
	}
	return found
}

func (c *upCluster) LabelNamespace(lns string, labels map[string]string) {
	c.label("ns:"+lns, labels)
}

func (c *upCluster) LabelPod(pod string, labels map[string]string) {
	if c.n.pods[pod] == nil {
		c.t.Fatalf("no pod %s", pod)
	}
	c.label("pod:"+pod, labels)
}

func (c *upCluster) PodIP(pod string) string {
	if c.n.pods[pod] == nil {
		c.t.Fatalf("no pod %s", pod)
	}
	return c.n.pods[pod].ip.String()
}

func (c *upCluster) label(obj string, labels map[string]string) {
	c.t.Helper()
	if c.labelled == nil {
		c.labelled = map[string][]string{}
	}
	patch := map[string]*string{}
	for k, v := range labels {
		patch[k] = ptr(v)
		c.labelled[obj] = append(c.labelled[obj], k)
	}
	c.patchLabels(obj, patch)
}

func (c *upCluster) patchLabels(obj string, labels map[string]*string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	ctx := context.Background()
	kind, name, _ := strings.Cut(obj, ":")
	var err error
	if kind == "ns" {
		_, err = c.n.k.CoreV1().Namespaces().Patch(ctx, c.n.prefix+"-"+name, "application/merge-patch+json", b, metav1.PatchOptions{})
	} else {
		p := c.n.pods[name]
		_, err = c.n.k.CoreV1().Pods(p.ns).Patch(ctx, p.name, "application/merge-patch+json", b, metav1.PatchOptions{})
	}
	if err != nil {
		c.t.Fatalf("label %s: %v", obj, err)
	}
}

// reset deletes every policy and removes the labels scenarios added; it says whether
// there was anything to undo.
func (c *upCluster) reset() bool {
	changed := c.deletePolicies() || len(c.labelled) > 0
	for obj, keys := range c.labelled {
		patch := map[string]*string{}
		for _, k := range keys {
			patch[k] = nil
		}
		c.patchLabels(obj, patch)
	}
	c.labelled = nil
	return changed
}
