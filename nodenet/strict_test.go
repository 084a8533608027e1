package nodenet

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/kubernetes/fake"

	kfake "github.com/patronus/patronus/kube/kclient/fake"
)

func TestStrictDestinations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster []string
		own     string
		remote  []string
		want    string
	}{
		{name: "the cluster minus the own /24", cluster: []string{"10.244.0.0/16"}, own: "10.244.5.0/24",
			want: "10.244.0.0/22 10.244.4.0/24 10.244.6.0/23 10.244.8.0/21 10.244.16.0/20 10.244.32.0/19 10.244.64.0/18 10.244.128.0/17"},
		{name: "own block first of the cluster", cluster: []string{"10.0.0.0/22"}, own: "10.0.0.0/24",
			want: "10.0.1.0/24 10.0.2.0/23"},
		{name: "own block last of the cluster", cluster: []string{"10.0.0.0/22"}, own: "10.0.3.0/24",
			want: "10.0.0.0/23 10.0.2.0/24"},
		{name: "no own block: the whole cluster", cluster: []string{"10.244.0.0/16"}, want: "10.244.0.0/16"},
		{name: "own block outside the cluster (a Node podCIDR): nothing cut", cluster: []string{"10.244.0.0/16"}, own: "10.99.0.0/24",
			want: "10.244.0.0/16"},
		{name: "peer blocks outside the cluster CIDR are guarded, inside ones merge away",
			cluster: []string{"10.244.0.0/16", "10.244.7.0/24", "10.99.1.0/24"}, own: "10.244.128.0/17",
			want: "10.99.1.0/24 10.244.0.0/17"},
		{name: "only peer blocks (no cluster CIDR)", cluster: []string{"10.244.2.0/24", "10.244.3.0/24"}, own: "10.244.1.0/24",
			want: "10.244.2.0/24 10.244.3.0/24"},
		{name: "a remote cluster's CIDR inside is left alone", cluster: []string{"10.0.0.0/22"}, own: "10.0.0.0/24",
			remote: []string{"10.0.2.0/24", "10.250.0.0/16"}, want: "10.0.1.0/24 10.0.3.0/24"},
		{name: "own block covering the cluster: nothing guarded", cluster: []string{"10.0.0.0/24"}, own: "10.0.0.0/16"},
		{name: "IPv6 ignored", cluster: []string{"fd00::/48", "10.0.0.0/23"}, own: "10.0.0.0/24", remote: []string{"fd00::/64"},
			want: "10.0.1.0/24"},
		{name: "unmasked input", cluster: []string{"10.0.0.9/23"}, own: "10.0.1.7/24", want: "10.0.0.0/24"},
		{name: "nothing configured", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cluster, remote []netip.Prefix
			for _, s := range tc.cluster {
				cluster = append(cluster, netip.MustParsePrefix(s))
			}
			for _, s := range tc.remote {
				remote = append(remote, netip.MustParsePrefix(s))
			}
			var own netip.Prefix
			if tc.own != "" {
				own = netip.MustParsePrefix(tc.own)
			}
			var got []string
			for _, p := range StrictDestinations(cluster, own, remote) {
				got = append(got, p.String())
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Fatalf("guarded %q, want %q", g, tc.want)
			}
		})
	}
}

// The remote clusters' CIDRs strict mode keeps out of the clear (besides ptw0 their
// traffic may leave by a tunnel device): IPv4, deduplicated, without the own block.
func TestStrictRemote(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remote []string
		own    string
		want   string
	}{
		{name: "none", own: "10.244.1.0/24", want: ""},
		{name: "one remote cidr", remote: []string{"10.248.0.0/16"}, own: "10.244.1.0/24", want: "10.248.0.0/16"},
		{name: "sorted, duplicates and nested ones merged", remote: []string{"10.250.0.0/16", "10.248.0.0/16", "10.248.3.0/24", "10.250.0.0/16"},
			own: "10.244.1.0/24", want: "10.248.0.0/16 10.250.0.0/16"},
		{name: "no own block yet: all of them", remote: []string{"10.248.0.0/16"}, want: "10.248.0.0/16"},
		{name: "own block inside a remote cidr is cut out", remote: []string{"10.0.0.0/22"}, own: "10.0.1.0/24", want: "10.0.0.0/24 10.0.2.0/23"},
		{name: "remote cidr inside the own block: nothing", remote: []string{"10.0.1.128/25"}, own: "10.0.1.0/24", want: ""},
		{name: "IPv6 ignored", remote: []string{"fd00:248::/48", "10.248.0.0/16"}, own: "10.244.1.0/24", want: "10.248.0.0/16"},
		{name: "unmasked input", remote: []string{"10.248.7.9/16"}, own: "10.244.1.7/24", want: "10.248.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var remote []netip.Prefix
			for _, s := range tc.remote {
				remote = append(remote, netip.MustParsePrefix(s))
			}
			var own netip.Prefix
			if tc.own != "" {
				own = netip.MustParsePrefix(tc.own)
			}
			var got []string
			for _, p := range StrictRemote(remote, own) {
				got = append(got, p.String())
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Fatalf("remote %q, want %q", g, tc.want)
			}
		})
	}
}

// The guarded space and the own block partition the cluster: no address is in two, none
// is missing (every /24 of a /16, own block anywhere).
func TestStrictDestinationsPartition(t *testing.T) {
	cluster := pfx("10.244.0.0/16")
	for i := range 256 {
		own := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
		g := StrictDestinations([]netip.Prefix{cluster}, own, nil)
		for j := range 256 {
			a := netip.AddrFrom4([4]byte{10, 244, byte(j), 1})
			n := 0
			for _, p := range g {
				if p.Contains(a) {
					n++
				}
			}
			if want := map[bool]int{true: 0, false: 1}[own.Contains(a)]; n != want {
				t.Fatalf("own %s: %s in %d guarded prefixes, want %d (%v)", own, a, n, want, g)
			}
		}
		if len(g) != 8 {
			t.Fatalf("own %s: %d prefixes, want 8 (/16 minus a /24)", own, len(g))
		}
	}
}

// strictRec is a recording datapath that also takes strict chains, reporting drops.
type strictRec struct {
	*recDatapath
	mu      sync.Mutex
	last    Strict
	calls   int
	dropped []uint64 // returned in turn (the last one repeats)
}

func (s *strictRec) SetStrict(st Strict) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.calls = st, s.calls+1
	if len(s.dropped) == 0 {
		return 0, nil
	}
	n := s.dropped[0]
	if len(s.dropped) > 1 {
		s.dropped = s.dropped[1:]
	}
	return n, nil
}

func (s *strictRec) get() (Strict, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.calls
}

// With strict on the controller guards the cluster minus its block (ptw0 only) and the
// remote CIDRs (ptw0 or a tunnel device), reports the keyless peer as dropped and keeps the drop count monotonic across
// chain rewrites; the peer with a key is encrypted and not dropped.
func TestControllerStrict(t *testing.T) {
	k2 := key(t).PublicKey()
	n2 := node("n2", "192.168.1.2", "10.244.2.0/24")
	n2.Annotations = map[string]string{AnnotationWGKey: k2.String()}
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), n2, node("n3", "192.168.1.3", "10.244.3.0/24"))
	dp := &strictRec{recDatapath: drained(t), dropped: []uint64{0, 5, 9, 2, 3}} // rewritten after 9
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: t.TempDir() + "/10-patronus.conflist", Datapath: dp,
		ClusterCIDR: pfx("10.244.0.0/22"), KeepSourceTo: []netip.Prefix{pfx("10.244.3.0/25"), pfx("10.250.0.0/16")},
		Resync: 50 * time.Millisecond, Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: key(t), Link: &fakeWG{}, Strict: true}}
	c, stop := runCtrl(t, o)
	defer stop()
	waitFor(t, "strict chain and peer states", func() error {
		st := c.Status()
		s, _ := dp.get()
		if got := fmt.Sprintf("%v %v %v %s %s %s", s.Sources, s.Guarded, s.Remote, s.Device, s.TunnelDevices, s.Chain); got != "[10.244.1.0/24] [10.244.0.0/24 10.244.2.0/24 10.244.3.128/25] [10.244.3.0/25 10.250.0.0/16] ptw0 wg* nodenet-strict" {
			return fmt.Errorf("strict %s", got)
		}
		if !st.Strict || st.StrictDropped != 12 {
			return fmt.Errorf("strict %v dropped %d, want true 12 (9 before the rewrite + 3)", st.Strict, st.StrictDropped)
		}
		var peers []string
		for _, p := range st.PeerStates {
			peers = append(peers, fmt.Sprintf("%s encrypted=%v dropped=%q", p.Node, p.Encrypted, p.Dropped))
		}
		if got, want := strings.Join(peers, "; "), `n2 encrypted=true dropped=""; n3 encrypted=false dropped="`+StrictDropped+`"`; got != want {
			return fmt.Errorf("peers %s, want %s", got, want)
		}
		return nil
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(StrictDroppedCounter(c.Status))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP `+MetricStrictDropped+` Packets from this node's pods to another node's pod block or a remote cluster's pod CIDR dropped by strict node encryption because they would have left unencrypted.
# TYPE `+MetricStrictDropped+` counter
`+MetricStrictDropped+` 12
`), MetricStrictDropped); err != nil {
		t.Fatal(err)
	}
}

// Strict off: the controller still asks for the chain, empty, so one an earlier run with
// strict on left is removed; no peer is reported dropped.
func TestControllerStrictOff(t *testing.T) {
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), node("n3", "192.168.1.3", "10.244.3.0/24"))
	dp := &strictRec{recDatapath: drained(t)}
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: t.TempDir() + "/10-patronus.conflist", Datapath: dp,
		ClusterCIDR: pfx("10.244.0.0/16"), KeepSourceTo: []netip.Prefix{pfx("10.250.0.0/16")}, Resync: 50 * time.Millisecond,
		Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: key(t), Link: &fakeWG{}}}
	c, stop := runCtrl(t, o)
	defer stop()
	waitFor(t, "empty strict chain", func() error {
		s, n := dp.get()
		st := c.Status()
		if n == 0 || len(s.Sources) != 0 || len(s.Guarded) != 0 || len(s.Remote) != 0 || st.Strict {
			return fmt.Errorf("strict %+v after %d calls, status strict %v", s, n, st.Strict)
		}
		if len(st.PeerStates) != 1 || st.PeerStates[0].Dropped != "" || st.PeerStates[0].Reason != PlainNoKey {
			return fmt.Errorf("peer states %+v", st.PeerStates)
		}
		return nil
	})
}

// A datapath that cannot drop with strict on is an error in the status (never silence).
func TestControllerStrictUnsupportedDatapath(t *testing.T) {
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"))
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: t.TempDir() + "/10-patronus.conflist", Datapath: drained(t),
		ClusterCIDR: pfx("10.244.0.0/16"), Resync: 50 * time.Millisecond,
		Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: key(t), Link: &fakeWG{}, Strict: true}}
	c, stop := runCtrl(t, o)
	defer stop()
	waitFor(t, "error", func() error {
		if st := c.Status(); !strings.Contains(st.LastError, "cannot drop traffic") {
			return fmt.Errorf("last error %q", st.LastError)
		}
		return nil
	})
}

func TestStrictNeedsWireGuard(t *testing.T) {
	client := fake.NewSimpleClientset()
	for _, tc := range []struct {
		e    Encrypt
		want string
	}{
		{Encrypt{Strict: true}, "strict node encryption needs node-encryption wireguard (it is none)"},
		{Encrypt{Mode: "none", Strict: true}, "needs node-encryption wireguard"},
		{Encrypt{Mode: "wireguard", Strict: true}, ""},
	} {
		_, err := New(Options{Client: kfake.Kube(client), NodeName: "n1", Encrypt: tc.e})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: error %v, want %q", tc.e, err, tc.want)
		}
	}
}

func TestStrictReason(t *testing.T) {
	for plain, want := range map[string]string{
		PlainNoKey:    "dropped: peer has no key (strict)",
		PlainNoDevice: "dropped: this node's WireGuard device is not up (strict)",
		PlainDupKey:   "dropped: " + PlainDupKey + " (strict)",
	} {
		if got := strictReason(plain); got != want {
			t.Errorf("%q: %q, want %q", plain, got, want)
		}
	}
}
