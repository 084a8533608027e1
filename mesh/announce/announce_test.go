package announce

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/patronus/patronus/mesh/trust"
)

type fixture struct {
	now                  time.Time
	east, west, stranger ed25519.PrivateKey
	v                    *trust.Verifier
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{now: time.Unix(1_800_000_000, 0)}
	for _, k := range []*ed25519.PrivateKey{&f.east, &f.west, &f.stranger} {
		var err error
		if *k, err = trust.GenerateClusterKey(); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	f.v, err = trust.NewVerifier(
		trust.Cluster{ID: "east", PublicKey: f.east.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{
			netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12")}},
		trust.Cluster{ID: "west", PublicKey: f.west.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{
			netip.MustParsePrefix("10.2.0.0/16")}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) identity(t *testing.T, cluster string, key ed25519.PrivateKey, node string) trust.Identity {
	t.Helper()
	id, err := trust.NewIdentity(cluster, key, node, f.now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (f *fixture) receiver(t *testing.T, reg prometheus.Registerer, log *slog.Logger) *Receiver {
	t.Helper()
	r, err := NewReceiver(ReceiverOptions{Verifier: f.v, Registerer: reg, Logger: log, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func prefixes(ps ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestReceive(t *testing.T) {
	f := newFixture(t)
	eastA := f.identity(t, "east", f.east, "a")
	westB := f.identity(t, "west", f.west, "b")
	strangerC := f.identity(t, "north", f.stranger, "c")
	impostor := f.identity(t, "west", f.stranger, "b") // claims a pinned cluster, wrong key
	signer := NewSigner(eastA, func() time.Time { return f.now })
	good, _, err := signer.Sign(Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.1.0/24", "10.96.0.0/12")}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(id trust.Identity, a Announcement) []byte {
		if a.Origin == "" {
			a.Origin, a.Cluster = id.Cert.Node, id.Cert.Cluster
		}
		if a.Seq == 0 {
			a.Seq = 7
		}
		if a.Expires == 0 {
			a.Expires = f.now.Add(time.Minute).UnixMilli()
		}
		w, err := Seal(a, id)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	forged := func() []byte { // valid envelope, body altered after signing
		var env envelope
		json.Unmarshal(good, &env)
		env.Body = bytes.Replace(env.Body, []byte("10.244.1.0/24"), []byte("10.244.2.0/24"), 1)
		w, _ := json.Marshal(env)
		return w
	}()
	svc := func(eps ...string) *Service {
		s := &Service{Namespace: "shop", Name: "cart", Type: "ClusterSetIP", Ports: []Port{{Port: 80, Protocol: "TCP"}}}
		for _, e := range eps {
			s.Endpoints = append(s.Endpoints, netip.MustParseAddr(e))
		}
		return s
	}
	r := f.receiver(t, nil, nil)
	for _, tc := range []struct {
		name string
		wire []byte
		want Reason // "" = accepted
	}{
		{"valid local prefixes", good, ""},
		{"valid pinned remote", seal(westB, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.2.3.0/24")}), ""},
		{"valid service", seal(eastA, Announcement{Kind: KindService, Service: svc("10.244.1.5")}), ""},
		{"valid probe", seal(eastA, Announcement{Kind: KindProbe, Probe: &Probe{Links: []Link{{Peer: "b", RTTMicros: 900}}}}), ""},
		{"forged signature", forged, ReasonBadSignature},
		{"unknown signer", seal(strangerC, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.9.0.0/16")}), ReasonUnknownSigner},
		{"impostor of a pinned cluster", seal(impostor, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.2.0.0/16")}), ReasonUnknownSigner},
		{"replayed sequence", good, ReasonReplay},
		{"expired", seal(eastA, Announcement{Kind: KindPrefix, Seq: 1 << 62, Prefixes: prefixes("10.244.1.0/24"), Expires: f.now.Add(-time.Second).UnixMilli()}), ReasonExpired},
		{"remote announces local range", seal(westB, Announcement{Kind: KindPrefix, Seq: 99, Prefixes: prefixes("10.244.0.0/16")}), ReasonUnauthorisedPrefix},
		{"default route", seal(eastA, Announcement{Kind: KindPrefix, Seq: 1 << 62, Prefixes: prefixes("0.0.0.0/0")}), ReasonUnauthorisedPrefix},
		{"service endpoint outside cluster", seal(westB, Announcement{Kind: KindService, Service: svc("10.244.1.5")}), ReasonUnauthorisedPrefix},
		{"origin mismatch", seal(eastA, Announcement{Kind: KindPrefix, Origin: "z", Cluster: "east", Prefixes: prefixes("10.244.1.0/24")}), ReasonOriginMismatch},
		{"garbage", []byte("{nope"), ReasonMalformed},
		{"unknown kind", seal(eastA, Announcement{Kind: "bogus"}), ReasonMalformed},
	} {
		// One receiver across the table: "replayed sequence" replays the announcement
		// accepted in the first row.
		t.Run(tc.name, func(t *testing.T) {
			before := r.Rejected(tc.want)
			_, err := r.Receive(tc.wire)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.want)
			}
			if tc.want != "" && r.Rejected(tc.want) != before+1 {
				t.Fatalf("counter for %s did not move", tc.want)
			}
		})
	}
}

func TestMetricsAndLogOnce(t *testing.T) {
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	r := f.receiver(t, reg, slog.New(slog.NewTextHandler(&logs, nil)))
	stranger := f.identity(t, "north", f.stranger, "c")
	for i := range 5 {
		w, _ := Seal(Announcement{Kind: KindPrefix, Origin: "c", Cluster: "north", Seq: uint64(i + 1),
			Expires: f.now.Add(time.Minute).UnixMilli(), Prefixes: prefixes("10.9.0.0/16")}, stranger)
		if _, err := r.Receive(w); ReasonOf(err) != ReasonUnknownSigner {
			t.Fatalf("want unknown signer, got %v", err)
		}
	}
	if got := testutil.ToFloat64(r.rejected.WithLabelValues("unknown_signer")); got != 5 {
		t.Fatalf("counter = %v, want 5", got)
	}
	if n, err := testutil.GatherAndCount(reg, "patronus_mesh_announcements_rejected_total"); err != nil || n != len(Reasons) {
		t.Fatalf("registered series = %d (%v), want %d", n, err, len(Reasons))
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestStateLifecycle(t *testing.T) {
	f := newFixture(t)
	r := f.receiver(t, nil, nil)
	clock := f.now
	a := NewSigner(f.identity(t, "east", f.east, "a"), func() time.Time { return clock })
	b := NewSigner(f.identity(t, "east", f.east, "b"), func() time.Time { return clock })
	mustRecv := func(s *Signer, ann Announcement, ttl time.Duration) Announcement {
		t.Helper()
		w, signed, err := s.Sign(ann, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Receive(w); err != nil {
			t.Fatal(err)
		}
		return signed
	}
	mustRecv(a, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.1.0/24")}, time.Minute)
	mustRecv(a, Announcement{Kind: KindService, Service: &Service{Namespace: "x", Name: "y"}}, time.Minute)
	mustRecv(b, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.2.0/24")}, 10*time.Second)
	if n := len(r.State().List()); n != 3 {
		t.Fatalf("state has %d, want 3", n)
	}
	// A newer prefix announcement replaces the older one of the same slot.
	newer := mustRecv(a, Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.3.0/24")}, time.Minute)
	if l := r.State().List(); len(l) != 3 || l[0].Seq != newer.Seq {
		t.Fatalf("replacement failed: %+v", l)
	}
	// Withdrawal of the service.
	mustRecv(a, Announcement{Kind: KindService, Withdraw: true, Service: &Service{Namespace: "x", Name: "y"}}, time.Minute)
	if n := len(r.State().List()); n != 2 {
		t.Fatalf("after withdraw: %d, want 2", n)
	}
	// b failed: its announcement expires.
	if gone := r.State().Expire(clock.Add(11 * time.Second)); len(gone) != 1 || gone[0].Origin != "b" {
		t.Fatalf("expire: %+v", gone)
	}
	// a left: everything of a is withdrawn.
	saved := r.State().List()
	if n := r.State().WithdrawOrigin("east", "a"); n != 1 || len(r.State().List()) != 0 {
		t.Fatalf("withdraw origin removed %d", n)
	}
	// Restore after a restart brings back unexpired entries and keeps replays out.
	r2 := f.receiver(t, nil, nil)
	r2.Restore(saved)
	if r2.State().Digest() != digestOf(saved) {
		t.Fatal("restore did not reproduce the state")
	}
	w, _ := Seal(saved[0], f.identity(t, "east", f.east, "a"))
	if _, err := r2.Receive(w); ReasonOf(err) != ReasonReplay {
		t.Fatalf("replay after restore: %v", err)
	}
}

func digestOf(as []Announcement) string {
	s := NewState()
	for _, a := range as {
		s.put(a)
	}
	return s.Digest()
}

func TestSignerSequenceMonotonic(t *testing.T) {
	f := newFixture(t)
	fixed := f.now
	s := NewSigner(f.identity(t, "east", f.east, "a"), func() time.Time { return fixed })
	var last uint64
	for range 100 {
		_, a, err := s.Sign(Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.1.0/24")}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if a.Seq <= last {
			t.Fatalf("sequence %d after %d", a.Seq, last)
		}
		last = a.Seq
	}
	big := &Service{Namespace: "n", Name: "s"}
	for i := range 200 {
		big.Endpoints = append(big.Endpoints, netip.AddrFrom4([4]byte{10, 244, 0, byte(i)}))
	}
	if _, _, err := s.Sign(Announcement{Kind: KindService, Service: big}, time.Minute); err == nil {
		t.Fatal("oversized announcement signed")
	}
}
