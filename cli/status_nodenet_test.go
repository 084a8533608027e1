package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
)

func TestNodeNetLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      *localapi.NodeNet
		err    string
		want   []string // substrings, one per line, in order
		failed int      // lines marked ✗
	}{
		{name: "off", n: nil},
		{name: "unreadable", err: "HTTP 503: not running", want: []string{"Pod block: HTTP 503"}, failed: 1},
		{name: "lease block", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "lease", ConfList: "/etc/cni/net.d/10-patronus.conflist", Peers: 2},
			want: []string{"Pod block: 10.244.3.0/24 (from lease), conflist /etc/cni/net.d/10-patronus.conflist, 2 peer nodes routed"}},
		{name: "single node", n: &localapi.NodeNet{}, want: []string{"Pod block: none"}},
		{name: "not written", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node"}, want: []string{"conflist not written yet"}, failed: 1},
		{name: "lost pods and error", n: &localapi.NodeNet{Block: "10.244.4.0/24", Source: "lease", ConfList: "/c", LastError: "boom",
			Lost: []localapi.NodeNetLost{{Namespace: "default", Name: "web", IPs: []string{"10.244.3.7/24"}, Block: "10.244.3.0/24"}}},
			want: []string{"Pod block: 10.244.4.0/24", "Pod network: boom", "Pod default/web holds 10.244.3.7/24 of lost pod block 10.244.3.0/24"}, failed: 2},
		{name: "encryption off: no line", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Encryption: "none"},
			want: []string{"Pod block: 10.244.3.0/24"}},
		{name: "encrypted, one peer in the clear", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Peers: 2, Encryption: "wireguard",
			WireGuard: &localapi.NodeNetWG{Device: "ptw0", Port: 51819, MTU: 1420, Implementation: "userspace", Peers: 1},
			PeerStates: []localapi.NodeNetPeerWG{{Node: "n2", Encrypted: true, LastHandshake: time.Date(2026, 11, 27, 14, 0, 0, 0, time.UTC)},
				{Node: "n3", Reason: "the node published no WireGuard key (yet)"}}},
			want: []string{"Pod block: 10.244.3.0/24", "Node encryption: wireguard on ptw0 (userspace, UDP 51819, MTU 1420), 1 of 2 peer nodes encrypted; oldest last handshake 2026-11-27T14:00:00Z",
				"Peer node n3 not encrypted: the node published no WireGuard key (yet)"}, failed: 1},
		{name: "no handshake yet", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Peers: 1, Encryption: "wireguard",
			WireGuard:  &localapi.NodeNetWG{Device: "ptw0", Port: 51819, MTU: 1420},
			PeerStates: []localapi.NodeNetPeerWG{{Node: "n2", Encrypted: true}}},
			want: []string{"Pod block", "1 of 1 peer nodes encrypted; a peer has had no handshake yet"}},
		{name: "device error", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Encryption: "wireguard",
			WireGuard: &localapi.NodeNetWG{Device: "ptw0", Error: "create TUN: permission denied"}},
			want: []string{"Pod block", "Node encryption: WireGuard device ptw0: create TUN: permission denied"}, failed: 1},
		{name: "strict, one peer dropped", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Peers: 2, Encryption: "wireguard",
			Strict: true, StrictDropped: 12, WireGuard: &localapi.NodeNetWG{Device: "ptw0", Port: 51819, MTU: 1420, Implementation: "kernel", Peers: 1},
			PeerStates: []localapi.NodeNetPeerWG{{Node: "n2", Encrypted: true, LastHandshake: time.Date(2026, 11, 27, 14, 0, 0, 0, time.UTC)},
				{Node: "n3", Reason: "the node published no WireGuard key (yet)", Dropped: "dropped: peer has no key (strict)"}}},
			want: []string{"Pod block", "Node encryption: wireguard on ptw0 (kernel, UDP 51819, MTU 1420), strict (12 packets dropped), 1 of 2 peer nodes encrypted",
				"Peer node n3: dropped: peer has no key (strict)"}, failed: 1},
		{name: "strict, device error", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Encryption: "wireguard", Strict: true,
			WireGuard: &localapi.NodeNetWG{Device: "ptw0", Error: "boom"}},
			want: []string{"Pod block", "Node encryption: strict (0 packets dropped), WireGuard device ptw0: boom"}, failed: 1},
		{name: "strict, no device yet", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node", ConfList: "/c", Encryption: "wireguard", Strict: true},
			want: []string{"Pod block", "Node encryption: wireguard, strict (0 packets dropped), no device yet"}, failed: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeNetLines(tc.n, tc.err)
			checkStatusLines(t, got, tc.want, tc.failed)
		})
	}
}

// checkStatusLines fails t unless got has one line per want, each containing its want
// substring in order, and exactly failed of them are marked ✗.
func checkStatusLines(t *testing.T, got []statusLine, want []string, failed int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %+v", len(got), len(want), got)
	}
	n := 0
	for i, l := range got {
		if !strings.Contains(l.text, want[i]) {
			t.Errorf("line %d %q lacks %q", i, l.text, want[i])
		}
		if !l.ok {
			n++
		}
	}
	if n != failed {
		t.Errorf("%d failed lines, want %d: %+v", n, failed, got)
	}
}
