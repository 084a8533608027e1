package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseRemoteClusters(t *testing.T) {
	const key = "MCowBQYDK2VwAyEA" // not 32 bytes once decoded: rejected
	for _, tc := range []struct {
		name, yaml string
		gossip     string
		errKey     string
	}{
		{"endpoint gives gossip host", "- {id: west, endpoint: '203.0.113.5:51820', cidr: 10.2.0.0/16}", "203.0.113.5:7946", ""},
		{"explicit gossip", "- {id: west, endpoint: 'a.example:1', cidr: 10.2.0.0/16, gossip: 'g.example:8000'}", "g.example:8000", ""},
		{"no id", "- {endpoint: 'a:1', cidr: 10.2.0.0/16}", "", "remote-clusters[0].id"},
		{"own id", "- {id: east, endpoint: 'a:1', cidr: 10.2.0.0/16}", "", "remote-clusters[0].id"},
		{"overlaps local", "- {id: west, endpoint: 'a:1', cidr: 10.244.1.0/24}", "", "remote-clusters[0].cidr"},
		{"unknown field", "- {id: w, endpoint: 'a:1', cidr: 10.2.0.0/16, colour: red}", "", "remote-clusters"},
		{"bad key", "- {id: w, endpoint: 'a:1', cidr: 10.2.0.0/16, publicKey: " + key + "}", "", "remote-clusters[0].publicKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ParseRemoteClusters(tc.yaml, "east", netip.MustParsePrefix("10.244.0.0/16"), "")
			if tc.errKey != "" {
				var ce *Error
				if !errors.As(err, &ce) || ce.Key != tc.errKey || ce.Source != RemoteClustersSource {
					t.Fatalf("err %v, want key %s from %s", err, tc.errKey, RemoteClustersSource)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 || rs[0].Gossip != tc.gossip {
				t.Fatalf("got %+v, want gossip %s", rs, tc.gossip)
			}
		})
	}
	_, err := ParseRemoteClusters("- {id: w}", "", netip.Prefix{}, "file x.yaml")
	if err == nil || !strings.Contains(err.Error(), "file x.yaml") {
		t.Fatalf("source not named: %v", err)
	}
}
