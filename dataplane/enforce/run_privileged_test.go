package enforce

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/bpf"
	"github.com/patronus/patronus/policy"
)

const (
	actAllow = ^uint32(0) // TC_ACT_UNSPEC (-1): pass on to the next program
	actDrop  = 2          // TC_ACT_SHOT
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF syscall, netns); CI runs as root")
	}
}

// loadUnpinned loads the programs with private, unpinned maps.
func loadUnpinned(t testing.TB) *bpf.PolicyObjects {
	t.Helper()
	requireRoot(t)
	spec, err := bpf.LoadPolicy()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs bpf.PolicyObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("loading BPF objects: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs
}

type pktSpec struct {
	src, dst     string
	proto        uint8
	sport, dport uint16
	syn          bool
}

// craft builds an Ethernet frame with an IPv4 or IPv6 header and an L4 header whose
// first four bytes are the ports (TCP, UDP and SCTP all start that way).
func craft(p pktSpec) []byte {
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], p.sport)
	binary.BigEndian.PutUint16(l4[2:], p.dport)
	if p.proto == 6 {
		l4[12] = 5 << 4
		if p.syn {
			l4[13] = 0x02
		}
	}
	if p.proto == 1 || p.proto == 58 {
		l4[0], l4[1] = 8, 0 // echo request
		if p.proto == 58 {
			l4[0] = 128
		}
	}
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = 64
		ip[9] = p.proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = p.proto
	ip[7] = 64
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(eth, ip...), l4...)
}

func run(t *testing.T, prog *ebpf.Program, p pktSpec) uint32 {
	t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: craft(p)})
	if err != nil {
		t.Fatalf("running program: %v", err)
	}
	return ret
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// lo is the interface BPF_PROG_TEST_RUN gives the skb (ifindex 1, loopback), so the
// endpoint under test is keyed by it.
const lo = 1

func testEndpoint() Endpoint {
	return Endpoint{
		EndpointPolicy: policy.EndpointPolicy{
			Namespace: "ns", Pod: "a",
			IPs:             []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
			IngressIsolated: true, EgressIsolated: true,
			Ingress: []policy.Rule{
				{Policy: "ns/p", Index: 0, Peers: []policy.Peer{{Prefix: pfx("10.1.0.0/16"), Except: []netip.Prefix{pfx("10.1.2.0/24")}}},
					Ports: []policy.PortRange{{Protocol: policy.TCP, First: 80, Last: 80}}},
				{Policy: "ns/p", Index: 1, Peers: []policy.Peer{{Prefix: pfx("10.1.2.128/25")}},
					Ports: []policy.PortRange{{Protocol: policy.UDP, First: 53, Last: 53}}},
				{Policy: "ns/q", Index: 0, Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8000, Last: 8100}}},
				{Policy: "ns/q", Index: 1, Peers: []policy.Peer{{Prefix: pfx("10.9.0.0/16")}},
					Ports: []policy.PortRange{{Protocol: policy.SCTP}}},
				{Policy: "ns/q", Index: 2, Peers: []policy.Peer{{Prefix: pfx("10.7.0.0/16")}, {Prefix: pfx("fd07::/64")}}},
			},
			Egress: []policy.Rule{
				{Policy: "ns/e", Index: 0, Peers: []policy.Peer{{Prefix: pfx("10.2.0.0/16")}},
					Ports: []policy.PortRange{{Protocol: policy.TCP, First: 443, Last: 443}}},
			},
		},
		HostVeth: "lo",
		Priority: 5,
	}
}

func TestProgramVerdicts(t *testing.T) {
	objs := loadUnpinned(t)
	s, err := newSyncer(mapsOf(objs))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.sync(map[uint32]Endpoint{lo: testEndpoint()}); err != nil {
		t.Fatal(err)
	}
	const tcp, udp, sctp, icmp = 6, 17, 132, 1
	tests := []struct {
		name string
		prog *ebpf.Program
		p    pktSpec
		want uint32
	}{
		{"cidr allowed", objs.ToPod, pktSpec{"10.1.1.1", "10.0.0.1", tcp, 1000, 80, false}, actAllow},
		{"cidr except denied", objs.ToPod, pktSpec{"10.1.2.1", "10.0.0.1", tcp, 1000, 80, false}, actDrop},
		{"rule inside except allows its port", objs.ToPod, pktSpec{"10.1.2.200", "10.0.0.1", udp, 1000, 53, false}, actAllow},
		{"rule inside except does not give back the other rule", objs.ToPod, pktSpec{"10.1.2.200", "10.0.0.1", tcp, 1000, 80, false}, actDrop},
		{"other port denied", objs.ToPod, pktSpec{"10.1.1.1", "10.0.0.1", tcp, 1000, 81, false}, actDrop},
		{"other protocol denied", objs.ToPod, pktSpec{"10.1.1.1", "10.0.0.1", udp, 1000, 80, false}, actDrop},
		{"outside cidr denied", objs.ToPod, pktSpec{"10.3.1.1", "10.0.0.1", tcp, 1000, 80, false}, actDrop},
		{"range first", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", tcp, 1000, 8000, false}, actAllow},
		{"range middle", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", tcp, 1000, 8077, false}, actAllow},
		{"range last", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", tcp, 1000, 8100, false}, actAllow},
		{"below range", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", tcp, 1000, 7999, false}, actDrop},
		{"above range", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", tcp, 1000, 8101, false}, actDrop},
		{"range is TCP only", objs.ToPod, pktSpec{"1.2.3.4", "10.0.0.1", udp, 1000, 8050, false}, actDrop},
		{"sctp all ports", objs.ToPod, pktSpec{"10.9.3.3", "10.0.0.1", sctp, 1000, 3868, false}, actAllow},
		{"sctp rule is not tcp", objs.ToPod, pktSpec{"10.9.3.3", "10.0.0.1", tcp, 1000, 3868, false}, actDrop},
		{"all protocols: icmp", objs.ToPod, pktSpec{"10.7.0.9", "10.0.0.1", icmp, 0, 0, false}, actAllow},
		{"all protocols: udp", objs.ToPod, pktSpec{"10.7.0.9", "10.0.0.1", udp, 1, 9, false}, actAllow},
		{"ipv6 peer allowed", objs.ToPod, pktSpec{"fd07::5", "fd00::1", tcp, 1000, 22, false}, actAllow},
		{"ipv6 peer denied", objs.ToPod, pktSpec{"fd08::5", "fd00::1", tcp, 1000, 22, false}, actDrop},
		{"v4-mapped any does not leak: v6 to range", objs.ToPod, pktSpec{"fd08::5", "fd00::1", tcp, 1000, 8001, false}, actAllow},
		{"egress allowed", objs.FromPod, pktSpec{"10.0.0.1", "10.2.3.4", tcp, 40000, 443, false}, actAllow},
		{"egress other cidr denied", objs.FromPod, pktSpec{"10.0.0.1", "10.3.3.4", tcp, 40000, 443, false}, actDrop},
		{"egress other port denied", objs.FromPod, pktSpec{"10.0.0.1", "10.2.3.4", tcp, 40000, 444, false}, actDrop},
		// Conntrack: the reply of the allowed egress connection above passes although no
		// ingress rule allows 10.2.3.4; a new connection from there does not.
		{"reply of allowed connection", objs.ToPod, pktSpec{"10.2.3.4", "10.0.0.1", tcp, 443, 40000, false}, actAllow},
		{"new reverse connection", objs.ToPod, pktSpec{"10.2.3.4", "10.0.0.1", tcp, 5555, 40000, false}, actDrop},
		{"reply of allowed ingress", objs.FromPod, pktSpec{"10.0.0.1", "10.1.1.1", tcp, 80, 1000, false}, actAllow},
		{"continuing allowed flow", objs.ToPod, pktSpec{"10.1.1.1", "10.0.0.1", tcp, 1000, 80, false}, actAllow},
	}
	for _, tc := range tests {
		if got := run(t, tc.prog, tc.p); got != tc.want {
			t.Errorf("%s: %+v: got %d, want %d", tc.name, tc.p, int32(got), int32(tc.want))
		}
	}

	// Policy change: a's egress no longer allows 10.2.3.4. The established flow goes on
	// (conntrack), a SYN on the same 5-tuple is a new connection and is checked.
	ep0 := testEndpoint()
	ep0.Egress[0].Peers = []policy.Peer{{Prefix: pfx("10.8.0.0/16")}}
	if err := s.sync(map[uint32]Endpoint{lo: ep0}); err != nil {
		t.Fatal(err)
	}
	if got := run(t, objs.FromPod, pktSpec{"10.0.0.1", "10.2.3.4", tcp, 40000, 443, false}); got != actAllow {
		t.Errorf("established flow after policy change: got %d, want allow", int32(got))
	}
	if got := run(t, objs.FromPod, pktSpec{"10.0.0.1", "10.2.3.4", tcp, 40000, 443, true}); got != actDrop {
		t.Errorf("new SYN on a known tuple after policy change: got %d, want drop", int32(got))
	}

	// Isolation off: everything passes in that direction.
	ep := testEndpoint()
	ep.IngressIsolated = false
	if err := s.sync(map[uint32]Endpoint{lo: ep}); err != nil {
		t.Fatal(err)
	}
	if got := run(t, objs.ToPod, pktSpec{"10.3.1.1", "10.0.0.1", tcp, 1001, 80, false}); got != actAllow {
		t.Errorf("ingress not isolated: got %d, want allow", int32(got))
	}
	if got := run(t, objs.FromPod, pktSpec{"10.0.0.1", "10.3.3.4", tcp, 40001, 443, false}); got != actDrop {
		t.Errorf("egress still isolated: got %d, want drop", int32(got))
	}
}

// TestProgramPriority: packets from the pod get the endpoint's QoS priority.
func TestProgramPriority(t *testing.T) {
	objs := loadUnpinned(t)
	s, err := newSyncer(mapsOf(objs))
	if err != nil {
		t.Fatal(err)
	}
	ep := testEndpoint()
	ep.EgressIsolated = false
	if err := s.sync(map[uint32]Endpoint{lo: ep}); err != nil {
		t.Fatal(err)
	}
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var skb *btf.Struct
	if err := kspec.TypeByName("__sk_buff", &skb); err != nil {
		t.Fatal(err)
	}
	var prioOff uint32
	for _, m := range skb.Members {
		if m.Name == "priority" {
			prioOff = m.Offset.Bytes()
		}
	}
	out := make([]byte, skb.Size)
	ret, err := objs.FromPod.Run(&ebpf.RunOptions{
		Data:       craft(pktSpec{"10.0.0.1", "10.5.5.5", 17, 1000, 53, false}),
		Context:    make([]byte, skb.Size),
		ContextOut: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ret != actAllow {
		t.Fatalf("verdict %d, want allow", int32(ret))
	}
	if got := binary.LittleEndian.Uint32(out[prioOff:]); got != 5 {
		t.Errorf("skb->priority = %d, want 5 (the endpoint's QoS priority)", got)
	}
}

// TestProgramToNet: at the uplink, a local pod's egress is checked against the
// (translated) destination; traffic of other sources passes.
func TestProgramToNet(t *testing.T) {
	objs := loadUnpinned(t)
	s, err := newSyncer(mapsOf(objs))
	if err != nil {
		t.Fatal(err)
	}
	// The endpoint's veth is some other interface: to_net finds it by address.
	if err := s.sync(map[uint32]Endpoint{77: testEndpoint()}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    pktSpec
		want uint32
	}{
		{pktSpec{"10.0.0.1", "10.2.3.4", 6, 40000, 443, false}, actAllow},
		{pktSpec{"10.0.0.1", "10.3.3.4", 6, 40000, 443, false}, actDrop},
		{pktSpec{"10.0.0.99", "10.3.3.4", 6, 40000, 443, false}, actAllow},
	} {
		if got := run(t, objs.ToNet, tc.p); got != tc.want {
			t.Errorf("%+v: got %d, want %d", tc.p, int32(got), int32(tc.want))
		}
	}
}

// TestProgramDenyReporting: every denied packet is counted, a flow's denials are
// reported once a second.
func TestProgramDenyReporting(t *testing.T) {
	objs := loadUnpinned(t)
	s, err := newSyncer(mapsOf(objs))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.sync(map[uint32]Endpoint{lo: testEndpoint()}); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(objs.PtEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for i := 0; i < 5; i++ {
		if got := run(t, objs.ToPod, pktSpec{"10.3.1.1", "10.0.0.1", 17, 1000, 80, false}); got != actDrop {
			t.Fatalf("got %d, want drop", int32(got))
		}
	}
	if got := run(t, objs.ToPod, pktSpec{"10.3.1.1", "10.0.0.1", 17, 1001, 80, false}); got != actDrop {
		t.Fatalf("got %d, want drop", int32(got))
	}
	var per []uint64
	if err := objs.PtDenies.Lookup(bpf.PolicyDenyKey{Ifindex: lo, Dir: uint32(Ingress)}, &per); err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, v := range per {
		total += v
	}
	if total != 6 {
		t.Errorf("deny counter %d, want 6", total)
	}
	events := 0
	rd.SetDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		if _, err := rd.Read(); err != nil {
			break
		}
		events++
	}
	if events != 2 {
		t.Errorf("%d deny events, want 2 (one per flow)", events)
	}
}

// TestProgramConntrackClock: conntrack ages entries on the coarse monotonic clock. An
// entry a little ahead of it (stamped by the precise clock of an earlier program version,
// or on a CPU that read it after the tick) is live, an entry older than the timeout is
// not; a packet whose transport header is cut short is dropped on either parse path.
func TestProgramConntrackClock(t *testing.T) {
	objs := loadUnpinned(t)
	s, err := newSyncer(mapsOf(objs))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.sync(map[uint32]Endpoint{lo: testEndpoint()}); err != nil {
		t.Fatal(err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	mono := uint64(ts.Nano())
	mapped := func(s string) (a [16]uint8) { return netip.MustParseAddr(s).As16() }
	v4mapped := func(s string) [16]uint8 { return netip.AddrFrom16(mapped("::ffff:" + s)).As16() }
	// The egress flow 10.0.0.1:port -> 10.2.3.4:53/udp, as from_pod records it; its
	// reply meets to_pod, whose ingress rules do not admit 10.2.3.4.
	entry := func(sport uint16, lastSeen uint64) {
		t.Helper()
		k := bpf.PolicyCtKey{Saddr: v4mapped("10.0.0.1"), Daddr: v4mapped("10.2.3.4"), Sport: htons(sport), Dport: htons(53), Proto: 17, Ifindex: lo}
		if err := objs.PtConntrack.Put(k, bpf.PolicyCtVal{LastSeen: lastSeen, Dir: uint8(Egress)}); err != nil {
			t.Fatal(err)
		}
	}
	entry(41000, mono+50*uint64(time.Millisecond)) // ahead of the clock
	entry(41001, mono-121*uint64(time.Second))     // older than the 120 s UDP timeout
	entry(41002, mono)
	for _, tc := range []struct {
		name  string
		sport uint16
		want  uint32
	}{{"entry ahead of the clock", 41000, actAllow}, {"expired entry", 41001, actDrop}, {"fresh entry", 41002, actAllow}} {
		if got := run(t, objs.ToPod, pktSpec{"10.2.3.4", "10.0.0.1", 17, 53, tc.sport, false}); got != tc.want {
			t.Errorf("reply, %s: got %d, want %d", tc.name, int32(got), int32(tc.want))
		}
	}
	for _, p := range []pktSpec{{"10.1.1.1", "10.0.0.1", 6, 1000, 80, false}, {"fd07::5", "fd00::1", 17, 1000, 22, false}} {
		full := craft(p)
		hdr := 14 + 20
		if netip.MustParseAddr(p.src).Is6() {
			hdr = 14 + 40
		}
		if got := run(t, objs.ToPod, p); got != actAllow {
			t.Fatalf("%+v whole: got %d, want allow", p, int32(got))
		}
		ret, err := objs.ToPod.Run(&ebpf.RunOptions{Data: full[:hdr+2]})
		if err != nil {
			t.Fatal(err)
		}
		if ret != actDrop {
			t.Errorf("%+v with 2 bytes of transport header: got %d, want drop", p, int32(ret))
		}
	}
}
