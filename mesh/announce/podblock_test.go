package announce

import (
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
