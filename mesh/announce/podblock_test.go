package announce

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// Pod block claims: one masked block with a claim time, authorised like any prefix, one
// slot per origin (a re-claim replaces the previous claim), separate from the prefix slot.
func TestPodBlockAnnouncement(t *testing.T) {
	f := newFixture(t)
	r := f.receiver(t, nil, nil)
	id := f.identity(t, "east", f.east, "n1")
	s := NewSigner(id, func() time.Time { return f.now })
	claimed := f.now.Add(-time.Hour).UnixMilli()
	block := func(p string, at int64) Announcement {
		return Announcement{Kind: KindPodBlock, Prefixes: prefixes(p), Claimed: at}
	}
	for _, tc := range []struct {
		name    string
		a       Announcement
		signErr bool   // the signer refuses it
		reason  Reason // receiver verdict when signed ("" = accepted)
	}{
		{"claim", block("10.244.1.0/24", claimed), false, ""},
		{"prefix announcement of the same origin", Announcement{Kind: KindPrefix, Prefixes: prefixes("10.244.0.0/16")}, false, ""},
		{"re-claim replaces the claim", block("10.244.2.0/24", claimed+5), false, ""},
		{"block outside the cluster's CIDRs", block("10.2.1.0/24", claimed), false, ReasonUnauthorisedPrefix},
		{"no claim time", block("10.244.3.0/24", 0), true, ""},
		{"two blocks", Announcement{Kind: KindPodBlock, Prefixes: prefixes("10.244.3.0/24", "10.244.4.0/24"), Claimed: claimed}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire, _, err := s.Sign(tc.a, time.Minute)
			if tc.signErr {
				if err == nil {
					t.Fatal("signer accepted an invalid pod block announcement")
				}
				// Forged past the signer: the receiver rejects it as malformed.
				tc.a.Origin, tc.a.Cluster, tc.a.Seq, tc.a.Expires = "n1", "east", uint64(f.now.UnixNano())+1, f.now.Add(time.Minute).UnixMilli()
				if wire, err = Seal(tc.a, id); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Receive(wire); ReasonOf(err) != ReasonMalformed {
					t.Fatalf("forged invalid claim: %v, want malformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Receive(wire); ReasonOf(err) != tc.reason {
				t.Fatalf("reason %q (%v), want %q", ReasonOf(err), err, tc.reason)
			}
		})
	}
	var claims, prefixAnns int
	for _, a := range r.State().List() {
		switch a.Kind {
		case KindPodBlock:
			claims++
			if a.Prefixes[0].String() != "10.244.2.0/24" || a.Claimed != claimed+5 {
				t.Fatalf("claim in state %+v, want the re-claim", a)
			}
		case KindPrefix:
			prefixAnns++
		}
	}
	if claims != 1 || prefixAnns != 1 {
		t.Fatalf("state holds %d claims and %d prefix announcements, want 1 and 1", claims, prefixAnns)
	}
}

// Claims made on another node's behalf (Node set): each subject has its own slot per
// origin, they are authorised like the origin's own claims (a gateway speaks only for
// blocks of its own cluster), a Node is allowed only on pod block claims and never names
// the origin itself, and a withdrawal removes only that subject's claim.
func TestPodBlockOnBehalf(t *testing.T) {
	f := newFixture(t)
	r := f.receiver(t, nil, nil)
	clock := func() time.Time { return f.now }
	gw1 := f.identity(t, "east", f.east, "gw1")
	signers := map[string]*Signer{
		"gw1": NewSigner(gw1, clock),
		"gw2": NewSigner(f.identity(t, "east", f.east, "gw2"), clock),
		"w1":  NewSigner(f.identity(t, "west", f.west, "w1"), clock),
	}
	claimed := f.now.Add(-time.Hour).UnixMilli()
	claim := func(node, p string) Announcement {
		return Announcement{Kind: KindPodBlock, Node: node, Prefixes: prefixes(p), Claimed: claimed}
	}
	for _, tc := range []struct {
		name    string
		by      string
		a       Announcement
		signErr bool   // the signer refuses it (then it is forged past the signer with gw1's key)
		reason  Reason // receiver verdict ("" = accepted)
	}{
		{"own claim", "gw1", claim("", "10.244.1.0/24"), false, ""},
		{"claim on behalf of n2", "gw1", claim("n2", "10.244.2.0/24"), false, ""},
		{"claim on behalf of n3", "gw1", claim("n3", "10.244.3.0/24"), false, ""},
		{"a second gateway speaks for n2 too", "gw2", claim("n2", "10.244.2.0/24"), false, ""},
		{"gateway of another cluster forges a block of east", "w1", claim("n4", "10.244.4.0/24"), false, ReasonUnauthorisedPrefix},
		{"block outside the cluster's CIDRs", "gw1", claim("n3", "10.2.1.0/24"), false, ReasonUnauthorisedPrefix},
		{"on behalf of itself", "gw1", claim("gw1", "10.244.6.0/24"), true, ReasonMalformed},
		{"subject node on a prefix announcement", "gw1", Announcement{Kind: KindPrefix, Node: "n2", Prefixes: prefixes("10.244.0.0/16")}, true, ReasonMalformed},
		{"subject node name too long", "gw1", claim(strings.Repeat("n", 254), "10.244.7.0/24"), true, ReasonMalformed},
		{"re-claim for n2 replaces gw1's claim for n2", "gw1", claim("n2", "10.244.5.0/24"), false, ""},
		{"withdraw n3", "gw1", Announcement{Kind: KindPodBlock, Node: "n3", Withdraw: true}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire, _, err := signers[tc.by].Sign(tc.a, time.Minute)
			if tc.signErr {
				if err == nil {
					t.Fatal("signer accepted it")
				}
				tc.a.Origin, tc.a.Cluster, tc.a.Seq, tc.a.Expires = "gw1", "east", uint64(f.now.UnixNano())+1, f.now.Add(time.Minute).UnixMilli()
				if wire, err = Seal(tc.a, gw1); err != nil {
					t.Fatal(err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Receive(wire); ReasonOf(err) != tc.reason {
				t.Fatalf("reason %q (%v), want %q", ReasonOf(err), err, tc.reason)
			}
		})
	}
	got := map[string]string{} // slot -> subject block
	for _, a := range r.State().List() {
		if a.Kind == KindPodBlock {
			got[a.Slot()] = a.Subject() + " " + a.Prefixes[0].String()
		}
	}
	want := map[string]string{
		"east/gw1/podblock/":   "gw1 10.244.1.0/24",
		"east/gw1/podblock/n2": "n2 10.244.5.0/24",
		"east/gw2/podblock/n2": "n2 10.244.2.0/24",
	}
	if !maps.Equal(got, want) {
		t.Fatalf("pod block claims in state %v, want %v", got, want)
	}
}

func TestPodBlockSubject(t *testing.T) {
	for _, tc := range []struct {
		a        Announcement
		slot     string
		subject  string
		onBehalf bool
	}{
		{Announcement{Kind: KindPodBlock, Cluster: "c", Origin: "gw"}, "c/gw/podblock/", "gw", false},
		{Announcement{Kind: KindPodBlock, Cluster: "c", Origin: "gw", Node: "n1"}, "c/gw/podblock/n1", "n1", true},
		{Announcement{Kind: KindPodBlock, Cluster: "c", Origin: "gw", Node: "n1", Withdraw: true}, "c/gw/podblock/n1", "n1", true},
		{Announcement{Kind: KindPrefix, Cluster: "c", Origin: "gw"}, "c/gw/prefix/", "gw", false},
	} {
		if s := tc.a.Slot(); s != tc.slot {
			t.Errorf("%+v: slot %q, want %q", tc.a, s, tc.slot)
		}
		if s := tc.a.Subject(); s != tc.subject || tc.a.OnBehalf() != tc.onBehalf {
			t.Errorf("%+v: subject %q on behalf %v, want %q %v", tc.a, s, tc.a.OnBehalf(), tc.subject, tc.onBehalf)
		}
	}
}
