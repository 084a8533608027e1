package steer

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// MeterChain counts, on a gateway, the bytes of pod traffic it forwards towards each
// remote cluster (patronus_pod_bandwidth_mbps): chain `steer-meter` of table `inet
// patronus`, hook forward, one counter rule per destination prefix tagged with the
// cluster id. It works with or without steering.
const MeterChain = "steer-meter"

// Meter programs and reads the counters in one network namespace ("" = the caller's).
type Meter struct {
	NetNS string
}

// Program makes the chain count dsts (cluster id → prefixes), replacing its rules in one
// transaction (counters restart from zero, which Rates treats as a reset).
func (m Meter) Program(dsts map[string][]netip.Prefix) error {
	c, done, err := Netlink{NetNS: m.NetNS}.nft()
	if err != nil {
		return err
	}
	defer done()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: MeterChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.FlushChain(ch)
	for _, id := range slices.Sorted(maps.Keys(dsts)) {
		for _, p := range dsts[id] {
			if !p.Addr().Is4() {
				return fmt.Errorf("steer: meter: destination %s: prefix %s is not IPv4", id, p)
			}
			e := slices.Clone(ipv4)
			e = append(e, ipMatch(16, p.Masked())...)
			e = append(e, &expr.Counter{})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: []byte(id)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("steer: writing chain %s: %w", MeterChain, err)
	}
	return nil
}

// Read returns the bytes counted per cluster id since Program.
func (m Meter) Read() (map[string]uint64, error) {
	c, done, err := Netlink{NetNS: m.NetNS}.nft()
	if err != nil {
		return nil, err
	}
	defer done()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	rules, err := c.GetRules(t, &nftables.Chain{Name: MeterChain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("steer: reading chain %s: %w", MeterChain, err)
	}
	out := map[string]uint64{}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				out[string(r.UserData)] += ctr.Bytes
			}
		}
	}
	return out, nil
}

// Remove deletes the chain.
func (m Meter) Remove() error {
	c, done, err := Netlink{NetNS: m.NetNS}.nft()
	if err != nil {
		return err
	}
	defer done()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	if ch, err := c.ListChain(t, MeterChain); err == nil {
		c.FlushChain(ch)
		c.DelChain(ch)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("steer: delete chain %s: %w", MeterChain, err)
		}
	}
	return nil
}
