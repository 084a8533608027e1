package nft

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

// TestLogReader: with a LogGroup, a denied packet comes back over NFLOG as a deny event
// naming the endpoint, direction, policies, addresses and ports; an allowed one does not.
func TestLogReader(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	tp.ServeAll(t)
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	e, err := New(Options{NetNS: tp.Node.Path(), LogGroup: DefaultLogGroup})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := policyAB(tp)
	eps[1].IngressPolicies = []string{"ns/b-in"}
	eps[0].EgressPolicies = []string{"ns/a-out"}
	if err := e.Set(context.Background(), eps); err != nil {
		t.Fatal(err)
	}
	rd, err := e.LogReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	tp.Check(t, "policy", []enforcetest.Probe{pr(0, 1, "tcp", 8080, true), pr(2, 1, "tcp", 8080, false), pr(0, 2, "udp", 5353, false)})

	want := map[string]func(enforce.Event) bool{
		"c -> b tcp/8080 ingress": func(ev enforce.Event) bool {
			return ev.Endpoint == "ns/b" && ev.Direction == enforce.Ingress && ev.Src.Addr() == tp.Pods[2].IP &&
				ev.Dst == tp.Pods[1].AddrPort(8080) && ev.Protocol == policy.TCP && len(ev.Policies) == 1 && ev.Policies[0] == "ns/b-in"
		},
		"a -> c udp/5353 egress": func(ev enforce.Event) bool {
			return ev.Endpoint == "ns/a" && ev.Direction == enforce.Egress && ev.Src.Addr() == tp.Pods[0].IP &&
				ev.Dst == tp.Pods[2].AddrPort(5353) && ev.Protocol == policy.UDP && len(ev.Policies) == 1 && ev.Policies[0] == "ns/a-out"
		},
	}
	_ = rd.SetDeadline(time.Now().Add(3 * time.Second))
	for len(want) > 0 {
		evs, err := rd.Read()
		if err != nil {
			t.Fatalf("still missing %d events: %v", len(want), err)
		}
		for _, ev := range evs {
			if ev.Verdict != enforce.Denied {
				t.Errorf("event with verdict %v", ev.Verdict)
			}
			if ev.Src.Addr() == tp.Pods[0].IP && ev.Dst.Port() == 8080 {
				t.Errorf("allowed a -> b tcp/8080 reported as denied: %+v", ev)
			}
			for k, f := range want {
				if f(ev) {
					delete(want, k)
					a := ev.Audit()
					if a.Verdict != "deny" || a.Port != ev.Dst.Port() || a.Policy == "" {
						t.Errorf("audit record %+v", a)
					}
				}
			}
		}
	}
}

// TestLogReaderAllowed: with AuditAllowed, the first packet of every allowed new
// connection of an audited endpoint comes back over NFLOG as an allow event, once per
// connection and direction (a UDP stream without replies stays in conntrack state new,
// yet is reported once); denied connections and endpoints not audited are not reported
// as allowed; turning audit off removes the audit chains.
func TestLogReaderAllowed(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	tp.ServeAll(t)
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	e, err := New(Options{NetNS: tp.Node.Path(), LogGroup: DefaultLogGroup, AuditAllowed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := policyAB(tp)
	eps[1].IngressPolicies = []string{"ns/b-in"}
	eps[0].EgressPolicies = []string{"ns/a-out"}
	eps[0].AuditAllowed, eps[1].AuditAllowed = true, true // a and b audited, c not
	ctx := context.Background()
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	rd, err := e.LogReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	a, b, c := tp.Pods[0], tp.Pods[1], tp.Pods[2]
	// One TCP connection a -> b:8080 (allowed by a's egress and b's ingress).
	conn, err := a.DialTCP(b.AddrPort(8080), 2*time.Second)
	if err != nil {
		t.Fatalf("a -> b tcp/8080: %v", err)
	}
	aPort := netip.MustParseAddrPort(conn.LocalAddr().String()).Port()
	for i := 0; i < 5; i++ { // more packets of the established connection
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	tp.Check(t, "denied", []enforcetest.Probe{pr(2, 1, "tcp", 8080, false)})
	// Five datagrams c -> a:7777 from one socket: a is not isolated, nothing listens, so
	// the flow never sees a reply and each datagram is a "new" packet to conntrack.
	const udpPort = 7777
	var cPort uint16
	err = c.NS.Do(func(ns.NetNS) error {
		u, err := net.Dial("udp4", a.AddrPort(udpPort).String())
		if err != nil {
			return err
		}
		defer u.Close()
		cPort = netip.MustParseAddrPort(u.LocalAddr().String()).Port()
		for i := 0; i < 5; i++ {
			_, _ = u.Write([]byte("x")) // ICMP errors may fail a later write: ignored
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	type key struct {
		src      netip.AddrPort
		dst      netip.AddrPort
		endpoint string
		dir      enforce.Direction
	}
	got := map[key]int{}
	var evs []enforce.Event
	_ = rd.SetDeadline(time.Now().Add(3 * time.Second)) // then Read fails: all read
	for {
		batch, err := rd.Read()
		if err != nil {
			break
		}
		evs = append(evs, batch...)
	}
	for _, ev := range evs {
		if ev.Verdict != enforce.Allowed {
			continue
		}
		got[key{ev.Src, ev.Dst, ev.Endpoint, ev.Direction}]++
		a := ev.Audit()
		if a.Verdict != "allow" || a.Port != ev.Dst.Port() || a.Endpoint != ev.Endpoint {
			t.Errorf("audit record %+v", a)
		}
		switch {
		case ev.Endpoint == "ns/a" && ev.Direction == enforce.Egress:
			if len(ev.Policies) != 1 || ev.Policies[0] != "ns/a-out" {
				t.Errorf("egress allow of a: policies %v", ev.Policies)
			}
		case ev.Endpoint == "ns/b" && ev.Direction == enforce.Ingress:
			if len(ev.Policies) != 1 || ev.Policies[0] != "ns/b-in" {
				t.Errorf("ingress allow of b: policies %v", ev.Policies)
			}
		}
	}
	want := map[key]int{
		{netip.AddrPortFrom(a.IP, aPort), b.AddrPort(8080), "ns/a", enforce.Egress}:     1,
		{netip.AddrPortFrom(a.IP, aPort), b.AddrPort(8080), "ns/b", enforce.Ingress}:    1,
		{netip.AddrPortFrom(c.IP, cPort), a.AddrPort(udpPort), "ns/a", enforce.Ingress}: 1,
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("allow events %+v: %d, want %d", k, got[k], n)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok && k.src.Addr() == c.IP && k.dst.Addr() == b.IP {
			t.Errorf("denied c -> b reported as allowed (%d): %+v", n, k)
		}
		if k.endpoint == "ns/c" {
			t.Errorf("endpoint c is not audited, yet %d allow events: %+v", n, k)
		}
	}
	if t.Failed() {
		t.Logf("events: %+v\n%s", evs, nftList(t, tp))
	}

	// Audit off: the audit chains and map elements go.
	eps[0].AuditAllowed, eps[1].AuditAllowed = false, false
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if l := nftList(t, tp); strings.Contains(l, "chain a"+"i") || strings.Contains(l, "chain ae") {
		t.Errorf("audit chains left after audit was turned off:\n%s", l)
	}
}
