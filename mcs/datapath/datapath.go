// Package datapath translates ClusterSetIP traffic with nftables: a connection to a
// ServiceImport's VIP and port is DNATed to one of the service's ready endpoints, chosen
// at random (numgen), preferring the local cluster's endpoints while any is ready, and
// pinned per client address for the affinity timeout when session affinity is ClientIP.
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
	Ports           []Port
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

	mu   sync.Mutex
	last []Service
	set  bool
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

// Set makes the owned chains implement services (replacing every earlier Set). It is a
// no-op when services equal the last applied set.
func (p *Programmer) Set(services []Service) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range services {
		if !s.VIP.Is4() {
			return fmt.Errorf("mcs datapath: service %s: VIP %s is not IPv4 (IPv6 is not supported yet)", s.Name, s.VIP)
		}
	}
	if p.set && reflect.DeepEqual(p.last, services) {
		return nil
	}
	c, t := p.conn, p.table
	c.AddTable(t)
	// Remove what we own (rules first: a chain must be empty and unreferenced to go).
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
	for _, s := range services {
		for _, sp := range s.Ports {
			proto, err := l4(sp.Protocol)
			if err != nil {
				return fmt.Errorf("mcs datapath: service %s: %w", s.Name, err)
			}
			id := hash(s.Name, s.VIP.String(), sp.Protocol, fmt.Sprint(sp.Port))
			svcChain := c.AddChain(&nftables.Chain{Name: Prefix + "s-" + id, Table: t})
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
				c.AddRule(&nftables.Rule{Table: t, Chain: base, Exprs: match, UserData: []byte(s.Name)})
			}
			eps := Pick(sp.Endpoints)
			slices.SortFunc(eps, func(a, b Endpoint) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port)) })
			if len(eps) == 0 {
				continue // no ready endpoint: untranslated (the VIP answers nothing)
			}
			verdicts := make([]nftables.SetElement, 0, len(eps))
			for i, ep := range eps {
				if !ep.Addr.Is4() {
					return fmt.Errorf("mcs datapath: service %s: endpoint %s is not IPv4", s.Name, ep.Addr)
				}
				eid := hash(id, ep.Addr.String(), fmt.Sprint(ep.Port))
				epChain := c.AddChain(&nftables.Chain{Name: Prefix + "e-" + eid, Table: t})
				var rule []expr.Any
				if s.AffinityTimeout > 0 {
					aff := &nftables.Set{Table: t, Name: Prefix + "a-" + eid, KeyType: nftables.TypeIPAddr,
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
				&expr.Numgen{Register: 1, Modulus: uint32(len(eps)), Type: unix.NFT_NG_RANDOM},
				&expr.Lookup{SourceRegister: 1, SetName: vmap.Name, SetID: vmap.ID, IsDestRegSet: true, DestRegister: 0},
			}})
		}
	}
	if err := c.Flush(); err != nil {
		p.set = false
		return fmt.Errorf("mcs datapath: apply: %w", err)
	}
	p.last, p.set = slices.Clone(services), true
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
