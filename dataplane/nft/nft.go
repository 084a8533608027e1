// Package nft enforces NetworkPolicy with nftables, as a second layer independent of
// the eBPF programs (and alone where eBPF cannot load). It owns the table `inet
// patronus`: a forward-hook chain, which runs after kube-proxy's DNAT, accepts
// established flows and dispatches new ones through verdict maps keyed by pod address
// to one chain per endpoint and direction. It implements enforce.Enforcer with the same
// compiled rules.
//
// Bridged pod-to-pod traffic reaches the forward hook only with bridge netfilter on
// (net.bridge.bridge-nf-call-iptables=1 in the node namespace), which kube-proxy needs
// on a bridge anyway.
package nft

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/policy"
)

// DefaultTable is the table this package owns (docs/CONTRACT.md).
const DefaultTable = "patronus"

const baseChain = "forward"

// Options configure the nftables enforcer.
type Options struct {
	// NetNS is the path of the node network namespace; "" means the caller's.
	NetNS string
	// Table name in the inet family; default DefaultTable.
	Table string
	// Linear compiles every (rule, peer, port) into its own rule with immediate
	// comparisons instead of sets: the classic linear chain, kept as a benchmark
	// baseline.
	Linear bool
	// EveryPacket drops the "ct state established,related accept" shortcut, so every
	// packet walks the endpoint chains, as a stateless filter does. Benchmark baseline
	// only: replies toward an isolated endpoint are then dropped.
	EveryPacket bool
	// LogGroup, if not 0, reports every denied packet (at most logRate a second per
	// endpoint and direction) to this NFLOG group of the node namespace, where
	// LogReader reads them (the audit log of the nftables datapath).
	LogGroup uint16
	// AuditAllowed (with LogGroup) also reports, to the same NFLOG group, the first
	// packet of every new connection that an endpoint with Endpoint.AuditAllowed sends
	// (egress) or receives (ingress) and the policies let through: the audit log's
	// allowed flows where no eBPF datapath reports them. At most allowLogRate a second
	// per endpoint and direction.
	AuditAllowed bool
	Logger       *slog.Logger
}

// Enforcer is the nftables datapath.
type Enforcer struct {
	opts  Options
	log   *slog.Logger
	conn  *nftables.Conn
	nsFd  *os.File
	table *nftables.Table

	mu      sync.Mutex
	known   map[string]enforce.Endpoint // chain name → endpoint, for Denies
	audited map[string]enforce.Endpoint // audit chain name → endpoint, for LogReader
}

var _ enforce.Enforcer = (*Enforcer)(nil)

// New opens a netlink connection to the node namespace and makes sure the table, base
// chain and verdict maps exist (existing endpoint chains are kept: a restarted agent
// changes nothing until its first Set).
func New(opts Options) (*Enforcer, error) {
	if opts.Table == "" {
		opts.Table = DefaultTable
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	e := &Enforcer{opts: opts, log: opts.Logger, known: map[string]enforce.Endpoint{}, audited: map[string]enforce.Endpoint{}}
	connOpts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	if opts.NetNS != "" {
		f, err := os.Open(opts.NetNS)
		if err != nil {
			return nil, fmt.Errorf("opening netns %s: %w", opts.NetNS, err)
		}
		e.nsFd = f
		connOpts = append(connOpts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(connOpts...)
	if err != nil {
		e.closeNS()
		return nil, fmt.Errorf("nftables: %w", err)
	}
	e.conn = c
	e.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: opts.Table}
	if err := e.ensureBase(); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// bigBuffers lets one batch (one atomic transaction) carry thousands of rules: netlink
// refuses a message larger than the socket's send buffer, whose default is 208 KiB.
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("netlink socket buffers: %w", serr)
	}
	return nil
}

func (e *Enforcer) closeNS() {
	if e.nsFd != nil {
		e.nsFd.Close()
	}
}

// Close implements enforce.Enforcer; the table stays.
func (e *Enforcer) Close() error {
	var err error
	if e.conn != nil {
		err = e.conn.CloseLasting()
	}
	e.closeNS()
	return err
}

// Uninstall deletes the table.
func (e *Enforcer) Uninstall() error {
	e.conn.DelTable(e.table)
	return e.conn.Flush()
}

func (e *Enforcer) vmap(name string, key nftables.SetDatatype) *nftables.Set {
	return &nftables.Set{Table: e.table, Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict}
}

// vmapSpec is a verdict map keyed by one address of the packet: the source (egress) or
// destination (ingress) at off in the network header of family proto.
type vmapSpec struct {
	name  string
	v6    bool
	dir   enforce.Direction
	off   uint32
	proto byte
}

// lookup is the base chain rule that jumps through m for packets of its family.
func (m vmapSpec) lookup(set *nftables.Set) []expr.Any {
	l := uint32(4)
	if m.v6 {
		l = 16
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{m.proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.off, Len: l},
		&expr.Lookup{SourceRegister: 1, SetName: m.name, SetID: set.ID, IsDestRegSet: true, DestRegister: 0},
	}
}

// ctStateIn matches packets whose conntrack state is one of bits.
func ctStateIn(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

var vmaps = []vmapSpec{
	{"eg4", false, enforce.Egress, 12, unix.NFPROTO_IPV4},
	{"in4", false, enforce.Ingress, 16, unix.NFPROTO_IPV4},
	{"eg6", true, enforce.Egress, 8, unix.NFPROTO_IPV6},
	{"in6", true, enforce.Ingress, 24, unix.NFPROTO_IPV6},
}

// auditVmaps send a new connection that the policy chains let through to the audit chain
// of its sender (egress) or receiver (ingress), when that endpoint is audited (its
// namespace has patronus.io/audit: all). Same keys as vmaps.
var auditVmaps = []vmapSpec{
	{"aeg4", false, enforce.Egress, 12, unix.NFPROTO_IPV4},
	{"ain4", false, enforce.Ingress, 16, unix.NFPROTO_IPV4},
	{"aeg6", true, enforce.Egress, 8, unix.NFPROTO_IPV6},
	{"ain6", true, enforce.Ingress, 24, unix.NFPROTO_IPV6},
}

// Connection mark bits recording that a connection was reported as allowed, per
// direction: "new connections only" (a UDP stream is in state new until its first reply,
// a TCP SYN may be retried). Bits no other part of Patronus uses (steer: 0x00ff0000,
// mcs: 0x07000000; docs/CONTRACT.md).
const (
	CtMarkAuditedEgress  uint32 = 0x10000000
	CtMarkAuditedIngress uint32 = 0x20000000
)

func auditMark(dir enforce.Direction) uint32 {
	if dir == enforce.Egress {
		return CtMarkAuditedEgress
	}
	return CtMarkAuditedIngress
}

func keyType(v6 bool) nftables.SetDatatype {
	if v6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// ensureBase creates the table, the forward chain (priority filter: after DNAT at
// dstnat) and the verdict maps, and rewrites the chain's rules if they are not the
// expected ones.
func (e *Enforcer) ensureBase() error {
	e.conn.AddTable(e.table)
	accept := nftables.ChainPolicyAccept
	ch := e.conn.AddChain(&nftables.Chain{Name: baseChain, Table: e.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	sets := map[string]*nftables.Set{}
	for _, m := range allVmaps() {
		s := e.vmap(m.name, keyType(m.v6))
		if err := e.conn.AddSet(s, nil); err != nil {
			return fmt.Errorf("nft map %s: %w", m.name, err)
		}
		sets[m.name] = s
	}
	if err := e.conn.Flush(); err != nil {
		return fmt.Errorf("creating nft table inet %s: %w", e.opts.Table, err)
	}
	var want [][]expr.Any
	if !e.opts.EveryPacket {
		want = append(want, append(ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
			&expr.Verdict{Kind: expr.VerdictAccept}))
	}
	// Egress of the sender first, then ingress of the receiver: both must let a new
	// flow through (each endpoint chain returns on a match and drops otherwise).
	for _, m := range vmaps {
		want = append(want, m.lookup(sets[m.name]))
	}
	// What reaches this point passed every policy chain. A new connection of an
	// audited endpoint goes through its audit chain (which returns): reported once.
	if e.opts.AuditAllowed && e.opts.LogGroup != 0 {
		for _, m := range auditVmaps {
			want = append(want, append(ctStateIn(expr.CtStateBitNEW), m.lookup(sets[m.name])...))
		}
	}
	have, err := e.conn.GetRules(e.table, ch)
	if err != nil {
		return fmt.Errorf("reading chain %s: %w", baseChain, err)
	}
	if len(have) == len(want) {
		return nil // ours; written by this code (the table is ours alone)
	}
	e.conn.FlushChain(ch)
	for _, ex := range want {
		e.conn.AddRule(&nftables.Rule{Table: e.table, Chain: ch, Exprs: ex})
	}
	if err := e.conn.Flush(); err != nil {
		return fmt.Errorf("writing chain %s: %w", baseChain, err)
	}
	return nil
}

// allVmaps are the policy and the audit verdict maps.
func allVmaps() []vmapSpec {
	return append(slices.Clone(vmaps), auditVmaps...)
}

// auditChain names an endpoint's audit chain in one direction: "ai<tag>" or "ae<tag>".
func auditChain(ep enforce.Endpoint, dir enforce.Direction) string {
	letter := "i"
	if dir == enforce.Egress {
		letter = "e"
	}
	return "a" + letter + epTag(ep.Key())
}

// isAuditChain tells an audit chain's name (see auditChain).
func isAuditChain(name string) bool {
	return len(name) == 10 && name[0] == 'a' && (name[1] == 'i' || name[1] == 'e') && isHex(name[2:])
}

// epTag is a short stable tag of an endpoint for chain names.
func epTag(key string) string {
	h := fnv.New32a()
	h.Write([]byte(key))
	return fmt.Sprintf("%08x", h.Sum32())
}

// chainSpec is the desired content of one endpoint chain.
type chainSpec struct {
	name string
	ep   enforce.Endpoint
	dir  enforce.Direction
	sets []setSpec
	// rules are built with set references resolved at write time
	rules []ruleSpec
}

type setSpec struct {
	name     string
	key      nftables.SetDatatype
	elements []nftables.SetElement
}

type ruleSpec struct {
	exprs func(sets map[string]*nftables.Set) []expr.Any
	user  []byte
}

// Set implements enforce.Enforcer: one netlink batch (atomic) adds new endpoint chains,
// repoints the verdict maps and deletes chains no longer wanted. Chains are named after
// their content, so an unchanged endpoint costs nothing and a changed one is switched in
// one step.
func (e *Enforcer) Set(ctx context.Context, endpoints []enforce.Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.ensureBase(); err != nil {
		return err
	}
	desired := map[string]*chainSpec{}
	audit := map[string]enforce.Endpoint{}      // audit chain → endpoint
	wantElems := map[string]map[string]string{} // vmap → addr bytes → chain
	for _, m := range allVmaps() {
		wantElems[m.name] = map[string]string{}
	}
	for _, ep := range endpoints {
		if ep.AuditAllowed && e.opts.AuditAllowed && e.opts.LogGroup != 0 {
			for _, m := range auditVmaps {
				name := auditChain(ep, m.dir)
				audit[name] = ep
				for _, a := range ep.IPs {
					if m.v6 == !a.Unmap().Is4() {
						wantElems[m.name][string(a.Unmap().AsSlice())] = name
					}
				}
			}
		}
		for _, d := range []struct {
			dir      enforce.Direction
			isolated bool
			rules    []policy.Rule
		}{{enforce.Ingress, ep.IngressIsolated, ep.Ingress}, {enforce.Egress, ep.EgressIsolated, ep.Egress}} {
			if !d.isolated {
				continue
			}
			cs := e.build(ep, d.dir, d.rules)
			desired[cs.name] = cs
			for _, a := range ep.IPs {
				for _, m := range vmaps {
					if m.dir == d.dir && m.v6 == !a.Unmap().Is4() {
						wantElems[m.name][string(a.Unmap().AsSlice())] = stableName(cs.name)
					}
				}
			}
		}
	}
	return e.apply(desired, audit, wantElems, nil)
}

// apply writes the difference in one netlink batch (atomic). Each endpoint and
// direction has a stable chain (the verdict maps' target, named by the endpoint) holding
// one jump to a content chain named by its rules; a change adds the new content chain,
// rewrites the jump and deletes the old content chain. (Replacing the map element
// instead is not possible in one batch: a hash set cannot hold the old and the new
// element of one key at once.) onlyDelete, if not nil, limits deletions to the chains
// for which it returns true (Remove).
// audit holds the audit chains wanted (chain → endpoint), whose content depends on the
// name alone.
func (e *Enforcer) apply(desired map[string]*chainSpec, audit map[string]enforce.Endpoint, wantElems map[string]map[string]string, onlyDelete func(chain string) bool) error {
	chains, err := e.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing chains: %w", err)
	}
	have := map[string]*nftables.Chain{}
	for _, c := range chains {
		// Other parts of Patronus keep chains in the same table (masquerade, MSS
		// clamping): only endpoint chains are this enforcer's to delete.
		if c.Table.Name == e.opts.Table && ownedChain(c.Name) {
			have[c.Name] = c
		}
	}
	sets, err := e.conn.GetSets(e.table)
	if err != nil {
		return fmt.Errorf("listing sets: %w", err)
	}
	haveSets := map[string]*nftables.Set{}
	for _, s := range sets {
		haveSets[s.Name] = s
	}
	wantChains := map[string]bool{}
	for name, cs := range desired {
		stable := stableName(name)
		wantChains[name], wantChains[stable] = true, true
		if _, ok := have[name]; ok {
			if _, ok := have[stable]; ok {
				continue
			}
		} else {
			ch := e.conn.AddChain(&nftables.Chain{Name: name, Table: e.table})
			made := map[string]*nftables.Set{}
			for _, ss := range cs.sets {
				if old, ok := haveSets[ss.name]; ok { // left by an earlier failure: replace
					e.conn.DelSet(old)
				}
				s := &nftables.Set{Table: e.table, Name: ss.name, KeyType: ss.key, Interval: true}
				if err := e.conn.AddSet(s, ss.elements); err != nil {
					return fmt.Errorf("set %s: %w", ss.name, err)
				}
				made[ss.name] = s
			}
			for _, r := range cs.rules {
				e.conn.AddRule(&nftables.Rule{Table: e.table, Chain: ch, Exprs: r.exprs(made), UserData: r.user})
			}
		}
		sc, ok := have[stable]
		if !ok {
			sc = e.conn.AddChain(&nftables.Chain{Name: stable, Table: e.table})
		} else {
			e.conn.FlushChain(sc)
		}
		e.conn.AddRule(&nftables.Rule{Table: e.table, Chain: sc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: name}}})
	}
	for name := range audit {
		wantChains[name] = true
		if _, ok := have[name]; ok {
			continue
		}
		ch := e.conn.AddChain(&nftables.Chain{Name: name, Table: e.table})
		for _, r := range e.auditRules(name) {
			e.conn.AddRule(&nftables.Rule{Table: e.table, Chain: ch, Exprs: r.exprs(nil), UserData: r.user})
		}
	}
	// Verdict maps. A key whose target changes (an address moved to another endpoint)
	// is deleted in a batch of its own before being added again.
	var moved []func() error
	deleted := false
	for _, m := range allVmaps() {
		vm := e.vmap(m.name, keyType(m.v6))
		cur, err := e.conn.GetSetElements(vm)
		if err != nil {
			return fmt.Errorf("reading map %s: %w", m.name, err)
		}
		curBy := map[string]string{}
		for _, el := range cur {
			// The library does not decode verdict data; the target chain is also
			// written as the element's comment.
			curBy[string(el.Key)] = el.Comment
		}
		var del, add []nftables.SetElement
		for k, c := range curBy {
			w, ok := wantElems[m.name][k]
			if onlyDelete != nil {
				if !onlyDelete(c) {
					continue
				}
				ok = false
			}
			if !ok || w != c {
				del = append(del, nftables.SetElement{Key: []byte(k)})
			}
		}
		for k, c := range wantElems[m.name] {
			if w, ok := curBy[k]; !ok {
				add = append(add, nftables.SetElement{Key: []byte(k), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: c}, Comment: c})
			} else if w != c {
				el := []nftables.SetElement{{Key: []byte(k), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: c}, Comment: c}}
				moved = append(moved, func() error { return e.conn.SetAddElements(vm, el) })
			}
		}
		if len(del) > 0 {
			deleted = true
			if err := e.conn.SetDeleteElements(vm, del); err != nil {
				return err
			}
		}
		if len(add) > 0 {
			if err := e.conn.SetAddElements(vm, add); err != nil {
				return err
			}
		}
	}
	// A chain still referenced by a map element cannot be deleted in the batch that
	// deletes the element (its use count drops at commit): commit deletions first.
	if len(moved) > 0 || deleted {
		if err := e.conn.Flush(); err != nil {
			return fmt.Errorf("nft batch: %w", err)
		}
		for _, f := range moved {
			if err := f(); err != nil {
				return err
			}
		}
	}
	// Chains and sets no longer wanted.
	var dead []*nftables.Chain
	for name, ch := range have {
		if wantChains[name] || (onlyDelete != nil && !onlyDelete(name)) {
			continue
		}
		e.conn.FlushChain(ch) // all flushed first: no jump refers to a chain being deleted
		dead = append(dead, ch)
	}
	for _, ch := range dead {
		e.conn.DelChain(ch)
	}
	for name, s := range haveSets {
		for _, d := range dead {
			if strings.HasPrefix(name, d.Name+"-") {
				e.conn.DelSet(s)
				break
			}
		}
	}
	if err := e.conn.Flush(); err != nil {
		return fmt.Errorf("nft batch: %w", err)
	}
	for _, d := range dead {
		delete(e.known, d.Name)
		delete(e.audited, d.Name)
	}
	for name, cs := range desired {
		e.known[name] = cs.ep
	}
	for name, ep := range audit {
		e.audited[name] = ep
	}
	return nil
}

// stableName of a content chain "i<tag>-<hash>" is "i<tag>".
func stableName(content string) string {
	n, _, _ := strings.Cut(content, "-")
	return n
}

// ownedChain tells the endpoint chains this enforcer writes ("i<tag>", "e<tag>", their
// content chains "i<tag>-<hash>" and the audit chains "ai<tag>", "ae<tag>") from every
// other chain in the table.
func ownedChain(name string) bool {
	if isAuditChain(name) {
		return true
	}
	stable, hash, hasHash := strings.Cut(name, "-")
	if len(stable) != 9 || (stable[0] != 'i' && stable[0] != 'e') || !isHex(stable[1:]) {
		return false
	}
	return !hasHash || (len(hash) == 16 && isHex(hash))
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isStable(name string) bool { return !strings.Contains(name, "-") }

// Remove implements enforce.Enforcer.
func (e *Enforcer) Remove(ctx context.Context, ep enforce.Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	tag := epTag(ep.Key())
	mine := func(chain string) bool {
		if isAuditChain(chain) {
			return chain[2:] == tag
		}
		return len(chain) > 1 && strings.HasPrefix(chain[1:], tag)
	}
	empty := map[string]map[string]string{}
	for _, m := range allVmaps() {
		empty[m.name] = map[string]string{}
	}
	return e.apply(map[string]*chainSpec{}, nil, empty, mine)
}

// DenyCount is the packets an endpoint chain dropped.
type DenyCount struct {
	Endpoint  enforce.Endpoint
	Direction enforce.Direction
	Packets   uint64
}

// Denies reads the drop counters of the endpoint chains this process set.
func (e *Enforcer) Denies() ([]DenyCount, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []DenyCount
	for name, ep := range e.known {
		rules, err := e.conn.GetRules(e.table, &nftables.Chain{Name: name, Table: e.table})
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", name, err)
		}
		dir := enforce.Ingress
		if name[0] == 'e' {
			dir = enforce.Egress
		}
		for _, r := range rules {
			for _, x := range r.Exprs {
				if c, ok := x.(*expr.Counter); ok {
					out = append(out, DenyCount{Endpoint: ep, Direction: dir, Packets: c.Packets})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint.Key() < out[j].Endpoint.Key() })
	return out, nil
}
