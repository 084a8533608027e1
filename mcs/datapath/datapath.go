// Package datapath translates ClusterSetIP traffic with nftables: a connection to a
// ServiceImport's VIP and port is DNATed to one of the service's ready endpoints, chosen
// at random (numgen), preferring the local cluster's endpoints while any is ready, and
// pinned per client address for the affinity timeout when session affinity is ClientIP.
//
// Services with a Priority (QoS class) get it on their packets in chain mcs-postrouting:
// after forwarding, which resets skb->priority from the TOS byte. The connection carries
// it in its ct mark (bits PriorityMask), set when its first packet is translated, since
// by postrouting the packet's destination is the endpoint's, not the VIP.
//
// It owns the chains and sets named `mcs-*` in table `inet patronus` (docs/CONTRACT.md)
// and nothing else there. Set takes the whole desired state and rewrites the owned
// objects in one transaction when it differs from the last applied one; conntrack keeps
// established connections on their endpoint. IPv4 only for now.
package datapath

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table is the shared Patronus table; Prefix marks the objects this package owns.
const (
	Table  = "patronus"
	Prefix = "mcs-"
	// PriorityMask is the part of the connection mark this package owns: the service's
	// skb->priority (1..7; 0 none), set when the connection is translated.
	PriorityMask  uint32 = 0x07000000
	priorityShift        = 24
)

// Endpoint is one backend of a service port.
type Endpoint struct {
	Addr  netip.Addr
	Port  uint16
	Ready bool
	Local bool // in this cluster
}

// Port is one port of a ClusterSetIP service.
type Port struct {
	Protocol  string // TCP | UDP | SCTP
	Port      uint16
	Endpoints []Endpoint
}

// Service is one ClusterSetIP with its ports.
type Service struct {
	Name string // namespace/name, for object names and comments
	VIP  netip.Addr
	// AffinityTimeout > 0 pins a client address to its endpoint for that long (ClientIP).
	AffinityTimeout time.Duration
	// Priority > 0 (at most 7) is written to skb->priority of the connections' packets
	// towards the service (the QoS class of its Service labels) as they leave the node. The policy
	// datapath's egress hook runs later and sets a pod's own non-zero priority over it, so
	// a pod that asks for latency-sensitive or bulk keeps its class.
	Priority uint32
	Ports    []Port
}

// Pick returns the endpoints traffic is balanced over: the ready local ones if any,
// else every ready one.
func Pick(eps []Endpoint) []Endpoint {
	var local, all []Endpoint
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		all = append(all, e)
		if e.Local {
			local = append(local, e)
		}
	}
	if len(local) > 0 {
		return local
	}
	return all
}

// Options configures a Programmer.
type Options struct {
	// NetNS is a network namespace path (tests); empty is the current namespace.
	NetNS string
}

// Programmer writes the VIP translation.
type Programmer struct {
	conn  *nftables.Conn
	nsFd  *os.File
	table *nftables.Table

	mu      sync.Mutex
	applied map[string]Service // by name, as last written
	set     bool               // applied is what the kernel has
}

// New opens the netlink connection.
func New(o Options) (*Programmer, error) {
	p := &Programmer{table: &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}}
	var opts []nftables.ConnOption
	opts = append(opts, nftables.AsLasting(), nftables.WithSockOptions(largeBuffers))
	if o.NetNS != "" {
		f, err := os.Open(o.NetNS)
		if err != nil {
			return nil, fmt.Errorf("mcs datapath: open netns %s: %w", o.NetNS, err)
		}
		p.nsFd = f
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("mcs datapath: nftables: %w", err)
	}
	p.conn = c
	return p, nil
}

// Close releases the connection; the rules stay.
func (p *Programmer) Close() error {
	var err error
	if p.conn != nil {
		err = p.conn.CloseLasting()
	}
	if p.nsFd != nil {
		p.nsFd.Close()
	}
	return err
}

// largeBuffers raises the netlink socket's buffers: Set sends the whole state as one
// transaction, and a hundred services already exceed the default 208 KiB send buffer.
func largeBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 64<<20); serr != nil {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("netlink socket buffers: %w", serr)
	}
	return nil
}

func hash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:5])
}

// Set makes the owned chains implement services (replacing every earlier Set). The
// first call rebuilds everything this package owns (leftovers of an earlier process
// included); later calls rewrite only the services that changed, in one transaction. It
// is a no-op when nothing changed.
func (p *Programmer) Set(services []Service) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	desired := map[string]Service{}
	for _, s := range services {
		if !s.VIP.Is4() {
			return fmt.Errorf("mcs datapath: service %s: VIP %s is not IPv4 (IPv6 is not supported yet)", s.Name, s.VIP)
		}
		if _, dup := desired[s.Name]; dup {
			return fmt.Errorf("mcs datapath: service %s listed twice", s.Name)
		}
		desired[s.Name] = s
	}
	c, t := p.conn, p.table
	pre := &nftables.Chain{Name: Prefix + "prerouting", Table: t}
	out := &nftables.Chain{Name: Prefix + "output", Table: t}
	changed := 0
	for name, old := range p.applied {
		if s, ok := desired[name]; !ok || !reflect.DeepEqual(s, old) {
			changed++
		}
	}
	// When most services changed, one rebuild is cheaper than many targeted deletions.
	if !p.set || changed > 16 && changed > len(p.applied)/2 {
		if err := p.rebuild(services); err != nil {
			p.set = false
			return err
		}
	} else {
		var gone, add []Service
		for name, old := range p.applied {
			if s, ok := desired[name]; !ok || !reflect.DeepEqual(s, old) {
				gone = append(gone, old)
			}
		}
		for name, s := range desired {
			if old, ok := p.applied[name]; !ok || !reflect.DeepEqual(s, old) {
				add = append(add, s)
			}
		}
		if len(gone) == 0 && len(add) == 0 {
			return nil
		}
		if len(gone) > 0 {
			byService := map[string][]*nftables.Rule{}
			for _, base := range []*nftables.Chain{pre, out} {
				rules, err := c.GetRules(t, base)
				if err != nil {
					p.set = false
					return fmt.Errorf("mcs datapath: read %s: %w", base.Name, err)
				}
				for _, r := range rules {
					byService[string(r.UserData)] = append(byService[string(r.UserData)], r)
				}
			}
			for _, s := range gone {
				for _, r := range byService[s.Name] {
					if err := c.DelRule(r); err != nil {
						p.set = false
						return fmt.Errorf("mcs datapath: delete rule of %s: %w", s.Name, err)
					}
				}
				removeService(c, t, s)
			}
		}
		for _, s := range add {
			if err := addService(c, t, pre, out, s); err != nil {
				return err
			}
		}

		if err := c.Flush(); err != nil {
			p.set = false // the next Set rebuilds from scratch
			return fmt.Errorf("mcs datapath: apply: %w", err)
		}
	}
	p.applied, p.set = desired, true
	return nil
}

// rebuild removes every owned object and writes services.
func (p *Programmer) rebuild(services []Service) error {
	c, t := p.conn, p.table
	c.AddTable(t)
	// Rules first: a chain must be empty and unreferenced to go.
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("mcs datapath: list chains: %w", err)
	}
	var own []*nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == Table && strings.HasPrefix(ch.Name, Prefix) {
			own = append(own, ch)
			c.FlushChain(ch)
		}
	}
	for _, ch := range own {
		c.DelChain(ch)
	}
	if sets, err := c.GetSets(t); err == nil {
		for _, s := range sets {
			if strings.HasPrefix(s.Name, Prefix) {
				c.DelSet(s)
			}
		}
	}
	pol := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: Prefix + "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &pol})
	out := c.AddChain(&nftables.Chain{Name: Prefix + "output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &pol})
	post := c.AddChain(&nftables.Chain{Name: Prefix + "postrouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityMangle, Policy: &pol})
	// Static: the priority a connection's ct mark carries goes on its packets towards the
	// service, one rule per value.
	for v := uint32(1); v <= PriorityMask>>priorityShift; v++ {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(PriorityMask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(v << priorityShift)},
			&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
			&expr.Meta{Key: expr.MetaKeyPRIORITY, SourceRegister: true, Register: 1},
		}})
	}
	for _, s := range services {
		if err := addService(c, t, pre, out, s); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("mcs datapath: apply: %w", err)
	}
	return nil
}

// names are the chain and set names of one service port and its picked endpoints.
type names struct {
	svc       string
	endpoints []Endpoint
	epChains  []string
	affSets   []string
}

func namesOf(s Service, sp Port) names {
	id := hash(s.Name, s.VIP.String(), sp.Protocol, fmt.Sprint(sp.Port))
	n := names{svc: Prefix + "s-" + id}
	n.endpoints = Pick(sp.Endpoints)
	slices.SortFunc(n.endpoints, func(a, b Endpoint) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port)) })
	for _, ep := range n.endpoints {
		eid := hash(id, ep.Addr.String(), fmt.Sprint(ep.Port))
		n.epChains = append(n.epChains, Prefix+"e-"+eid)
		n.affSets = append(n.affSets, Prefix+"a-"+eid)
	}
	return n
}

// removeService queues the deletion of s's chains and sets (its base chain rules must
// be deleted first).
func removeService(c *nftables.Conn, t *nftables.Table, s Service) {
	for _, sp := range s.Ports {
		n := namesOf(s, sp)
		all := append([]string{n.svc}, n.epChains...)
		for _, name := range all {
			c.FlushChain(&nftables.Chain{Name: name, Table: t})
		}
		for _, name := range all {
			c.DelChain(&nftables.Chain{Name: name, Table: t})
		}
		if s.AffinityTimeout > 0 {
			for _, name := range n.affSets {
				c.DelSet(&nftables.Set{Name: name, Table: t})
			}
		}
	}
}

// addService queues s's chains, sets and base chain rules.
func addService(c *nftables.Conn, t *nftables.Table, pre, out *nftables.Chain, s Service) error {
	for _, sp := range s.Ports {
		proto, err := l4(sp.Protocol)
		if err != nil {
			return fmt.Errorf("mcs datapath: service %s: %w", s.Name, err)
		}
		n := namesOf(s, sp)
		svcChain := c.AddChain(&nftables.Chain{Name: n.svc, Table: t})
		if s.Priority > 0 {
			// The connection remembers the service's priority (first packet only: NAT
			// chains see nothing else); mcs-postrouting applies it to every packet.
			c.AddRule(&nftables.Rule{Table: t, Chain: svcChain, Exprs: []expr.Any{
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^PriorityMask),
					Xor: binaryutil.NativeEndian.PutUint32(min(s.Priority, PriorityMask>>priorityShift) << priorityShift)},
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
			}})
		}
		match := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: s.VIP.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(sp.Port)},
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain.Name},
		}
		for _, base := range []*nftables.Chain{pre, out} {
			// UserData names the service, so a later Set finds the rules to delete.
			c.AddRule(&nftables.Rule{Table: t, Chain: base, Exprs: match, UserData: []byte(s.Name)})
		}
		if len(n.endpoints) == 0 {
			continue // no ready endpoint: untranslated (the VIP answers nothing)
		}
		verdicts := make([]nftables.SetElement, 0, len(n.endpoints))
		for i, ep := range n.endpoints {
			if !ep.Addr.Is4() {
				return fmt.Errorf("mcs datapath: service %s: endpoint %s is not IPv4", s.Name, ep.Addr)
			}
			epChain := c.AddChain(&nftables.Chain{Name: n.epChains[i], Table: t})
			var rule []expr.Any
			if s.AffinityTimeout > 0 {
				aff := &nftables.Set{Table: t, Name: n.affSets[i], KeyType: nftables.TypeIPAddr,
					Dynamic: true, HasTimeout: true, Timeout: s.AffinityTimeout}
				if err := c.AddSet(aff, nil); err != nil {
					return fmt.Errorf("mcs datapath: affinity set: %w", err)
				}
				// Clients seen recently on this endpoint go straight back to it.
				c.AddRule(&nftables.Rule{Table: t, Chain: svcChain, Exprs: []expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
					&expr.Lookup{SourceRegister: 1, SetName: aff.Name, SetID: aff.ID},
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: epChain.Name},
				}})
				rule = append(rule,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
					&expr.Dynset{SrcRegKey: 1, SetName: aff.Name, SetID: aff.ID, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: s.AffinityTimeout})
			}
			rule = append(rule,
				&expr.Immediate{Register: 1, Data: ep.Addr.AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ep.Port)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
			c.AddRule(&nftables.Rule{Table: t, Chain: epChain, Exprs: rule})
			k := make([]byte, 4)
			binary.NativeEndian.PutUint32(k, uint32(i))
			verdicts = append(verdicts, nftables.SetElement{Key: k, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: epChain.Name}})
		}
		vmap := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true,
			KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		if err := c.AddSet(vmap, verdicts); err != nil {
			return fmt.Errorf("mcs datapath: endpoint map: %w", err)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: svcChain, Exprs: []expr.Any{
			&expr.Numgen{Register: 1, Modulus: uint32(len(n.endpoints)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, SetName: vmap.Name, SetID: vmap.ID, IsDestRegSet: true, DestRegister: 0},
		}})
	}
	return nil
}

func l4(proto string) (byte, error) {
	switch strings.ToUpper(cmp.Or(proto, "TCP")) {
	case "TCP":
		return unix.IPPROTO_TCP, nil
	case "UDP":
		return unix.IPPROTO_UDP, nil
	case "SCTP":
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", proto)
}
