package wg

import (
	"fmt"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// MSS clamping: a forwarded TCP SYN leaving through a tunnel gets its MSS option set to
// the route MTU minus headers (nft `tcp flags syn tcp option maxseg size set rt mtu`), so
// pods with a 1500-byte MTU never send segments the tunnel cannot carry and large
// transfers do not depend on ICMP "fragmentation needed" reaching them. Each side clamps
// what enters its own tunnel, which covers both directions of a connection.

// MSSTable and MSSChain are where the rules live (docs/CONTRACT.md): table inet patronus,
// a chain of its own at the forward hook with mangle priority.
const (
	MSSTable = "patronus"
	MSSChain = "tunnel-mss"
)

// EnsureMSSClamp makes chain tunnel-mss hold exactly one clamp rule per device in devs
// (in the namespace at nsPath, "" = the caller's). An unchanged set writes nothing.
func EnsureMSSClamp(nsPath string, devs []string) error {
	var opts []nftables.ConnOption
	if nsPath != "" {
		f, err := os.Open(nsPath)
		if err != nil {
			return fmt.Errorf("wg: mss: netns %s: %w", nsPath, err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("wg: mss: nftables: %w", err)
	}
	defer c.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: MSSTable}
	want := slices.Clone(devs)
	slices.Sort(want)
	want = slices.Compact(want)
	if ch, err := c.ListChain(t, MSSChain); err == nil {
		rules, err := c.GetRules(t, ch)
		if err == nil {
			var have []string
			for _, r := range rules {
				have = append(have, string(r.UserData))
			}
			if slices.Equal(have, want) {
				return nil
			}
		}
	}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: MSSChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	c.FlushChain(ch)
	for _, d := range want {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: []byte(d), Exprs: clampExprs(d)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("wg: mss: writing chain %s: %w", MSSChain, err)
	}
	return nil
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func clampExprs(dev string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dev)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// tcp flags & syn != 0
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		// tcp option maxseg size set rt mtu
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
