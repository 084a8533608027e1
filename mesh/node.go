// Package mesh is the decentralized mesh of Patronus gateway agents: Serf gossip (over
// memberlist) for membership, multicast beacons (mesh/beacon) for zero-configuration
// discovery, and signed announcements (mesh/announce) verified against the cluster trust
// model (mesh/trust). A Node admits only members whose tags carry a certificate signed by
// a trusted cluster key, re-broadcasts its own announcements periodically and whenever a
// member joins (so state converges after a partition heals), paced so that a gateway
// relaying many nodes' claims does not flood the gossip, withdraws a leaving node's
// announcements, lets a failed node's announcements expire, runs serf-style event
// handler scripts, and persists the accepted state in the node database.
package mesh

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/beacon"
	"github.com/patronus/patronus/mesh/trust"
)

// Member tag keys (short: serf limits the encoded tags to 512 bytes).
const (
	TagCluster   = "cluster"
	TagRole      = "role"
	TagCert      = "cert"
	TagWireGuard = "wg"
	TagPodCIDRs  = "pods"
	TagEndpoints = "eps"
	TagVersion   = "ver"
)

// AnnounceEvent is the serf user event name that carries announcements.
const AnnounceEvent = "patronus-announce"

// DefaultGossipPort is Serf's port (docs/CONTRACT.md).
const DefaultGossipPort = 7946

// StateKey is the node database key of the persisted mesh state.
const StateKey = "mesh/state"

// KV is the small key/value store the node persists its state in (store.DB satisfies it).
type KV interface {
	Get(ctx context.Context, key string) (string, bool, error)
	Set(ctx context.Context, key, value string) error
}

// Tags are the member tags a node advertises besides cluster and certificate.
type Tags struct {
	Role         string
	PodCIDRs     []netip.Prefix
	WireGuardKey string
	Endpoints    []string // underlay endpoints host:port
	Version      string
	Extra        map[string]string
}

// Options configures a Node.
type Options struct {
	NodeName  string
	ClusterID string
	// Identity is the node key with its certificate (Cert.Node and Cert.Cluster must match).
	Identity trust.Identity
	Verifier *trust.Verifier

	BindAddr      string // default 0.0.0.0
	BindPort      int    // default 7946
	AdvertiseAddr string // default: chosen by memberlist from the bound address
	AdvertisePort int

	// GossipKeys is the encryption keyring, primary first; empty means plaintext gossip.
	GossipKeys [][]byte
	// KeyringFile, if set, is where serf persists the keyring after a rotation.
	KeyringFile string

	Tags  Tags
	Seeds []string // join seeds host:port (remote clusters' gossip addresses)

	// Beacons. Disabled when DisableBeacons is set (in-process benchmarks on loopback).
	DisableBeacons   bool
	BeaconGroup      netip.AddrPort
	BeaconInterfaces []string
	BeaconTTL        int
	BeaconInterval   time.Duration

	// Prefixes announced by this node at start (its pod CIDR, the service CIDR).
	Prefixes []netip.Prefix
	// Refresh is how often own announcements are re-signed and re-broadcast (30s); TTL is
	// their lifetime (3×Refresh), after which a failed node's announcements expire. Both
	// stretch when the node holds more announcements than AnnounceRate sends in a Refresh.
	Refresh time.Duration
	TTL     time.Duration
	// AnnounceRate is how many own announcements per second the node broadcasts at most
	// (default DefaultAnnounceRate, bursts of announceBurst); the rest wait in a queue,
	// new and withdrawn ones ahead of refreshes. When the node holds more announcements
	// than fit in one Refresh at this rate (a gateway relaying the claims of hundreds of
	// nodes), a refresh round takes longer and every announcement's TTL grows by the same
	// factor, so none expires before it is re-signed. Negative: no pacing, every
	// announcement and refresh sent at once (the behaviour before pacing; a benchmark's
	// baseline).
	AnnounceRate float64

	// Profile "lan" (default) or "local" (fast failure detection, for tests and loopback).
	Profile string
	// ReconnectInterval is how often serf retries failed members (default 10s).
	ReconnectInterval time.Duration

	EventHandlers  []EventHandler
	HandlerTimeout time.Duration // default 30s

	Store      KV
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Node is one mesh agent.
type Node struct {
	o        Options
	log      *slog.Logger
	serf     *serf.Serf
	events   chan serf.Event
	recv     *announce.Receiver
	signer   *announce.Signer
	beacons  *beacon.Beaconer
	sent     atomic.Uint64
	pace     *rate.Limiter // nil: no pacing
	kick     chan struct{} // wakes the pacer
	hooks    chan serf.Event
	rejoins  chan struct{}
	admitted *prometheus.CounterVec

	mu          sync.Mutex
	subs        map[chan struct{}]struct{}       // Subscribe's channels
	own         map[string]announce.Announcement // slot -> own announcement (re-signed on refresh)
	out         sendQueue                        // own slots waiting for the pacer
	withdrawals map[string]announce.Announcement // slot -> withdrawal waiting in out
	expiry      map[string]time.Time             // own slot -> expiry of its last broadcast
	lastJoin    map[string]time.Time             // beacon-triggered joins, rate limited per node
	eventsLog   []EventRecord                    // recent events for /v1/events
	lastPersist persistMark
}

// EventRecord is an event as the local API reports it.
type EventRecord struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Name    string    `json:"name,omitempty"`
	Members []string  `json:"members,omitempty"`
	Payload []byte    `json:"payload,omitempty"`
	LTime   uint64    `json:"ltime,omitempty"`
}

// New creates the node and starts gossiping (listening); Run drives it.
func New(o Options) (*Node, error) {
	if o.NodeName == "" || o.ClusterID == "" {
		return nil, errors.New("mesh: node name and cluster id are required")
	}
	if o.Verifier == nil || o.Identity.Key == nil {
		return nil, errors.New("mesh: trust verifier and node identity are required")
	}
	if o.Identity.Cert.Node != o.NodeName || o.Identity.Cert.Cluster != o.ClusterID {
		return nil, fmt.Errorf("mesh: certificate is for %s/%s, node is %s/%s", o.Identity.Cert.Cluster, o.Identity.Cert.Node, o.ClusterID, o.NodeName)
	}
	if err := o.Verifier.Verify(o.Identity.Cert, time.Now()); err != nil {
		return nil, fmt.Errorf("mesh: own certificate: %w", err)
	}
	if o.BindAddr == "" {
		o.BindAddr = "0.0.0.0"
	}
	if o.BindPort == 0 {
		o.BindPort = DefaultGossipPort
	}
	if o.Refresh == 0 {
		o.Refresh = 30 * time.Second
	}
	if o.TTL == 0 {
		o.TTL = 3 * o.Refresh
	}
	if o.ReconnectInterval == 0 {
		o.ReconnectInterval = 10 * time.Second
	}
	if o.HandlerTimeout == 0 {
		o.HandlerTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{o: o, log: o.Logger.With("node", o.NodeName, "cluster", o.ClusterID),
		events: make(chan serf.Event, 1024), hooks: make(chan serf.Event, 256), rejoins: make(chan struct{}, 1),
		own: map[string]announce.Announcement{}, withdrawals: map[string]announce.Announcement{}, expiry: map[string]time.Time{},
		lastJoin: map[string]time.Time{}, kick: make(chan struct{}, 1)}
	if o.AnnounceRate == 0 {
		o.AnnounceRate = DefaultAnnounceRate
	}
	if o.AnnounceRate > 0 {
		n.pace = rate.NewLimiter(rate.Limit(o.AnnounceRate), announceBurst)
	}
	n.o = o
	var err error
	n.recv, err = announce.NewReceiver(announce.ReceiverOptions{Verifier: o.Verifier, Registerer: o.Registerer, Logger: n.log})
	if err != nil {
		return nil, err
	}
	n.signer = announce.NewSigner(o.Identity, nil)
	n.admitted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "patronus_mesh_members_rejected_total",
		Help: "Gossip merges refused because a member's tags carry no certificate of a trusted cluster.",
	}, []string{"cluster"})
	gossipSent := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "patronus_mesh_gossip_sent_bytes_total",
		Help: "Bytes of gossip (UDP and TCP) this node sent.",
	}, func() float64 { return float64(n.sent.Load()) })
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{n.admitted, gossipSent} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("mesh: register metrics: %w", err)
			}
		}
	}
	if o.Store != nil {
		n.restore(context.Background())
	}
	if !o.DisableBeacons {
		n.beacons, err = beacon.New(beacon.Options{Identity: o.Identity, Verifier: o.Verifier, Gossip: n.gossipAddr,
			Group: o.BeaconGroup, Interfaces: o.BeaconInterfaces, TTL: o.BeaconTTL, Interval: o.BeaconInterval,
			OnPeer: n.onBeacon, Registerer: o.Registerer, Logger: n.log})
		if err != nil {
			return nil, err
		}
	}
	if err := n.startSerf(); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) tags() map[string]string {
	t := map[string]string{TagCluster: n.o.ClusterID, TagCert: n.o.Identity.Cert.TagValue()}
	tg := n.o.Tags
	maps.Copy(t, tg.Extra)
	set := func(k, v string) {
		if v != "" {
			t[k] = v
		}
	}
	set(TagRole, tg.Role)
	set(TagWireGuard, tg.WireGuardKey)
	set(TagVersion, tg.Version)
	set(TagEndpoints, strings.Join(tg.Endpoints, ","))
	var pods []string
	for _, p := range tg.PodCIDRs {
		pods = append(pods, p.String())
	}
	set(TagPodCIDRs, strings.Join(pods, ","))
	return t
}

func (n *Node) startSerf() error {
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = n.o.NodeName
	conf.Tags = n.tags()
	conf.EventCh = n.events
	conf.Merge = mergeGuard{n}
	conf.ReconnectInterval = n.o.ReconnectInterval
	conf.UserEventSizeLimit = 2048
	conf.KeyringFile = n.o.KeyringFile
	logger := newStdLogger(n.log)
	conf.Logger = logger
	ml := memberlistConfig(n.o.Profile)
	if n.o.Profile == "local" {
		conf.ReapInterval = 5 * time.Second
	}
	ml.Name = n.o.NodeName
	ml.BindAddr, ml.BindPort = n.o.BindAddr, n.o.BindPort
	ml.AdvertiseAddr, ml.AdvertisePort = n.o.AdvertiseAddr, n.o.AdvertisePort
	ml.Logger = logger
	if len(n.o.GossipKeys) > 0 {
		kr, err := memberlist.NewKeyring(n.o.GossipKeys, n.o.GossipKeys[0])
		if err != nil {
			return fmt.Errorf("mesh: gossip keyring: %w", err)
		}
		ml.Keyring = kr
		ml.GossipVerifyIncoming, ml.GossipVerifyOutgoing = true, true
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{n.o.BindAddr}, BindPort: n.o.BindPort, Logger: logger})
	if err != nil {
		return fmt.Errorf("mesh: listen for gossip on %s:%d: %w", n.o.BindAddr, n.o.BindPort, err)
	}
	ct := newCountingTransport(nt, &n.sent)
	ml.Transport = ct
	conf.MemberlistConfig = ml
	s, err := serf.Create(conf)
	if err != nil {
		ct.Shutdown()
		return fmt.Errorf("mesh: start serf: %w", err)
	}
	n.serf = s
	return nil
}

// memberlistConfig is the gossip timing of a profile: memberlist's LAN defaults, or for
// "local" its loopback timings (fast probes, gossip and failure detection) with the LAN
// retransmit multiplier. memberlist sends each broadcast Mult×⌈log10(N+1)⌉ times, and
// its local preset's Mult of 2 reaches only 2 of the 3 other nodes of a 4-node mesh.
// After a partition heals that is not made up for: only the node that merged the other
// side's state broadcasts its members as alive, the nodes that knew them already do not
// relay it, so a node it missed learned them at its next push-pull (up to 15 s later):
// TestEdgePartition converged in 12-22 s in 6 of 16 runs, each time a newcomer not
// seeing the other side's newcomer. With 4 every other node of a 4-node mesh gets it in
// the first gossip round (3 targets), and in larger ones each node it is new to relays it.
func memberlistConfig(profile string) *memberlist.Config {
	if profile != "local" {
		return memberlist.DefaultLANConfig()
	}
	ml := memberlist.DefaultLocalConfig()
	ml.RetransmitMult = memberlist.DefaultLANConfig().RetransmitMult
	return ml
}

// mergeGuard refuses members whose tags do not prove membership of a trusted cluster: an
// agent of another cluster on the same LAN, whose key is not pinned, is not admitted.
type mergeGuard struct{ n *Node }

func (g mergeGuard) NotifyMerge(members []*serf.Member) error {
	for _, m := range members {
		if err := g.n.checkMember(m.Name, m.Tags); err != nil {
			g.n.admitted.WithLabelValues(m.Tags[TagCluster]).Inc()
			g.n.log.Debug("member refused", "member", m.Name, "err", err)
			return err
		}
	}
	return nil
}

func (n *Node) checkMember(name string, tags map[string]string) error {
	cluster := tags[TagCluster]
	cert, err := trust.ParseTagValue(cluster, name, tags[TagCert])
	if err != nil {
		return fmt.Errorf("mesh: member %s: %w", name, err)
	}
	if err := n.o.Verifier.Verify(cert, time.Now()); err != nil {
		return fmt.Errorf("mesh: member %s: %w", name, err)
	}
	return nil
}

// gossipAddr is the address beacons announce.
func (n *Node) gossipAddr() string {
	m := n.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
}

// onBeacon joins the sender unless it is already an alive member (or was tried recently).
func (n *Node) onBeacon(b beacon.Beacon, src netip.Addr) {
	for _, m := range n.serf.Members() {
		if m.Name == b.Node && m.Status == serf.StatusAlive {
			return
		}
	}
	n.mu.Lock()
	if time.Since(n.lastJoin[b.Node]) < 3*time.Second {
		n.mu.Unlock()
		return
	}
	n.lastJoin[b.Node] = time.Now()
	n.mu.Unlock()
	addr, err := beacon.ResolveGossip(b, src)
	if err != nil {
		n.log.Debug("beacon without usable address", "peer", b.Node, "err", err)
		return
	}
	go func() {
		if _, err := n.serf.Join([]string{addr}, true); err != nil {
			n.log.Debug("join from beacon failed", "peer", b.Node, "addr", addr, "err", err)
		} else {
			n.log.Info("joined peer found by beacon", "peer", b.Node, "addr", addr)
		}
	}()
}

// Run drives the node until ctx ends, then leaves the mesh gracefully (so peers withdraw
// this node's announcements) and shuts down.
func (n *Node) Run(ctx context.Context) error {
	defer n.serf.Shutdown()
	if len(n.o.Prefixes) > 0 {
		if err := n.Announce(announce.Announcement{Kind: announce.KindPrefix, Prefixes: n.o.Prefixes}); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { n.eventLoop(gctx); return nil })
	g.Go(func() error { n.hookLoop(gctx); return nil })
	g.Go(func() error { n.maintain(gctx); return nil })
	if n.pace != nil {
		g.Go(func() error { n.sendLoop(gctx); return nil })
	}
	if len(n.o.Seeds) > 0 {
		g.Go(func() error { n.joinSeeds(gctx); return nil })
	}
	if n.beacons != nil {
		g.Go(func() error {
			if err := n.beacons.Run(gctx); err != nil {
				// Multicast may be unavailable (no interface yet, no permission): gossip via
				// seeds still works, so this is logged, not fatal.
				n.log.Warn("beacons stopped", "err", err)
			}
			return nil
		})
	}
	err := g.Wait()
	if lerr := n.serf.Leave(); lerr != nil {
		n.log.Warn("leave", "err", lerr)
	}
	n.persist(context.Background(), true)
	return err
}

// Shutdown stops gossip immediately without leaving (a crash, for tests).
func (n *Node) Shutdown() error { return n.serf.Shutdown() }

// joinSeeds joins the seeds at start, retrying every 5 s until one answers, then every
// 30 s those seeds no alive member is reached at (a remote cluster that was unreachable,
// or a partition that serf gave up on).
func (n *Node) joinSeeds(ctx context.Context) {
	wait := 5 * time.Second
	joined := false
	for {
		seeds := n.o.Seeds
		if joined {
			seeds = seedsToJoin(n.o.Seeds, n.Members())
		}
		if len(seeds) > 0 {
			if cnt, err := n.serf.Join(seeds, true); cnt > 0 {
				joined, wait = true, 30*time.Second
			} else if err != nil {
				n.log.Debug("join seeds", "seeds", seeds, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// seedsToJoin are the seeds that no alive member is reached at. Re-joining a seed that
// already is one is a full state exchange for nothing and, because joins ignore old
// events, raises serf's minimum event time to the seed's clock, which drops
// announcements still on their way to this node. A seed that is not an address (a host
// name) cannot be matched and is always joined.
func seedsToJoin(seeds []string, members []Member) []string {
	alive := map[netip.AddrPort]bool{}
	for _, m := range members {
		if m.Status != serf.StatusAlive.String() {
			continue
		}
		if ap, err := netip.ParseAddrPort(m.Addr); err == nil {
			alive[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
		}
	}
	var out []string
	for _, s := range seeds {
		ap, err := netip.ParseAddrPort(s)
		if err == nil && alive[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] {
			continue
		}
		out = append(out, s)
	}
	return out
}

func (n *Node) eventLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-n.events:
			n.handleEvent(e)
		}
	}
}

func (n *Node) handleEvent(e serf.Event) {
	switch ev := e.(type) {
	case serf.UserEvent:
		if ev.Name == AnnounceEvent {
			v := n.recv.State().Version()
			_, _ = n.recv.Receive(ev.Payload) // a rejection is counted and logged by the receiver
			if n.recv.State().Version() != v {
				n.notify()
			}
			return
		}
		n.record(EventRecord{Type: "user", Name: ev.Name, Payload: ev.Payload, LTime: uint64(ev.LTime)})
	case serf.MemberEvent:
		names := make([]string, 0, len(ev.Members))
		for _, m := range ev.Members {
			names = append(names, m.Name)
			if ev.Type == serf.EventMemberLeave || ev.Type == serf.EventMemberReap {
				if k := n.recv.State().WithdrawOrigin(m.Tags[TagCluster], m.Name); k > 0 {
					n.log.Info("withdrew announcements of departed member", "member", m.Name, "count", k)
				}
			}
		}
		n.record(EventRecord{Type: ev.Type.String(), Members: names})
		n.notify()
		if ev.Type == serf.EventMemberJoin {
			// Push our state to the newcomer (and to the other side of a healed partition).
			select {
			case n.rejoins <- struct{}{}:
			default:
			}
		}
	}
	if len(n.o.EventHandlers) > 0 {
		select {
		case n.hooks <- e:
		default:
			n.log.Warn("event handler queue full, event dropped", "event", e.String())
		}
	}
}

// Subscribe returns a channel that receives a value soon after the membership or the
// verified announcements change (a member joined, left, failed, was updated or reaped; an
// announcement was accepted, withdrawn or expired), so a follower reconciles at once
// instead of at its next resync. Changes coalesce: the channel holds at most one pending
// value and the mesh never waits for the reader, who re-reads Members and State (the
// value carries nothing). cancel ends the subscription.
func (n *Node) Subscribe() (changes <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs == nil {
		n.subs = map[chan struct{}]struct{}{}
	}
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs, ch)
		n.mu.Unlock()
	}
}

// notify wakes every subscriber without blocking.
func (n *Node) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (n *Node) record(r EventRecord) {
	r.Time = time.Now()
	n.mu.Lock()
	n.eventsLog = append(n.eventsLog, r)
	if len(n.eventsLog) > 256 {
		n.eventsLog = slices.Clone(n.eventsLog[len(n.eventsLog)-256:])
	}
	n.mu.Unlock()
}

// Events returns the recent events (member changes and user events, not announcements).
func (n *Node) Events() []EventRecord {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.eventsLog)
}

func (n *Node) hookLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-n.hooks:
			self := n.serf.LocalMember()
			for _, h := range n.o.EventHandlers {
				if !h.Matches(e) {
					continue
				}
				out, err := runHandler(ctx, h, self, e, n.o.HandlerTimeout)
				if err != nil {
					n.log.Warn("event handler failed", "event", e.String(), "err", err, "output", out)
				} else {
					n.log.Debug("event handler ran", "event", e.String(), "output", out)
				}
			}
		}
	}
}

// maintain re-broadcasts own announcements on refresh and after joins (debounced),
// expires stale ones and persists the state when it changed.
func (n *Node) maintain(ctx context.Context) {
	refresh := time.NewTicker(n.o.Refresh)
	defer refresh.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var pushAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			n.rebroadcast()
		case <-n.rejoins:
			if pushAt.IsZero() {
				// Joins come in bursts (a partition heals, many agents start): one push
				// shortly after the burst's start covers them.
				pushAt = time.Now().Add(500 * time.Millisecond)
			}
		case now := <-tick.C:
			if gone := n.recv.State().Expire(now); len(gone) > 0 {
				n.log.Info("announcements expired", "count", len(gone))
				n.notify()
			}
			n.persist(ctx, false)
		}
		if !pushAt.IsZero() && time.Now().After(pushAt) {
			pushAt = time.Time{}
			n.rebroadcast()
		}
	}
}

// DefaultAnnounceRate is Options.AnnounceRate's default. Serf gossips a user event to
// every member as a broadcast that each member holding it sends 4·⌈log10(members+1)⌉
// times, in UDP packets of at most 1400 bytes every 200 ms to 3 members: measured on
// loopback (BenchmarkRelayClaims, BENCHMARKS.md) a 4-node mesh carries about 10 signed
// ~630-byte announcements per second before it is saturated (and from 9 members the
// log factor doubles, halving that). 4 per second per node leaves room for the other
// members' announcements and for membership gossip.
const DefaultAnnounceRate = 4

// announceBurst is how many announcements go out at once before pacing starts: a node's
// few ordinary announcements (prefixes, tunnel, services) are never delayed.
const announceBurst = 16

// sendQueue is the pacer's queue of own slots: urgent ones (new, changed or withdrawn
// announcements) before due refreshes, each slot at most once.
type sendQueue struct {
	urgent, routine []string
	queued          map[string]bool // slot -> queued urgent
}

// push queues slot unless it already waits; an urgent push moves a waiting refresh ahead.
func (q *sendQueue) push(slot string, urgent bool) {
	if q.queued == nil {
		q.queued = map[string]bool{}
	}
	if u, ok := q.queued[slot]; ok {
		if !urgent || u {
			return
		}
		q.routine = slices.DeleteFunc(q.routine, func(s string) bool { return s == slot })
	}
	q.queued[slot] = urgent
	if urgent {
		q.urgent = append(q.urgent, slot)
	} else {
		q.routine = append(q.routine, slot)
	}
}

// pop takes the next slot: urgent ones first, except that the next refresh goes ahead
// when due says its announcement is close to expiring (a long queue of new claims must
// not let the older ones lapse).
func (q *sendQueue) pop(due func(slot string) bool) (string, bool) {
	var slot string
	switch {
	case len(q.routine) > 0 && (len(q.urgent) == 0 || due(q.routine[0])):
		slot, q.routine = q.routine[0], q.routine[1:]
	case len(q.urgent) > 0:
		slot, q.urgent = q.urgent[0], q.urgent[1:]
	default:
		return "", false
	}
	delete(q.queued, slot)
	return slot, true
}

func (q *sendQueue) len() int { return len(q.urgent) + len(q.routine) }

// ttlLocked is the lifetime of an announcement signed now: TTL, stretched by how much
// longer than Refresh one paced round over the node's own announcements takes (n.mu held).
func (n *Node) ttlLocked() time.Duration {
	if n.pace == nil {
		return n.o.TTL
	}
	round := time.Duration(float64(len(n.own)+len(n.withdrawals)) / n.o.AnnounceRate * float64(time.Second))
	if round <= n.o.Refresh {
		return n.o.TTL
	}
	return time.Duration(float64(n.o.TTL) * float64(round) / float64(n.o.Refresh))
}

// Announce signs a (its kind and subject select the slot it replaces), broadcasts it, and
// keeps re-broadcasting it every Refresh until replaced or withdrawn. With pacing it is
// sent at once while the rate allows, else queued ahead of refreshes; an error is an
// announcement that cannot be signed (invalid, too large), found before queueing.
func (n *Node) Announce(a announce.Announcement) error {
	n.mu.Lock()
	ttl := n.ttlLocked()
	n.mu.Unlock()
	wire, signed, err := n.signer.Sign(a, ttl)
	if err != nil {
		return err
	}
	slot := signed.Slot()
	n.mu.Lock()
	if a.Withdraw {
		delete(n.own, slot)
		n.withdrawals[slot] = a
	} else {
		n.own[slot] = a
		delete(n.withdrawals, slot)
	}
	now := n.pace == nil || (n.out.len() == 0 && n.pace.Allow())
	if now {
		delete(n.withdrawals, slot)
		n.sentLocked(signed)
	} else {
		n.out.push(slot, true)
	}
	n.mu.Unlock()
	if !now {
		n.wake()
		return nil
	}
	// Serf delivers our own event to us too, which applies it to our state.
	if err := n.serf.UserEvent(AnnounceEvent, wire, false); err != nil {
		return fmt.Errorf("mesh: broadcast announcement: %w", err)
	}
	return nil
}

// sentLocked notes the expiry of a broadcast own announcement (n.mu held).
func (n *Node) sentLocked(a announce.Announcement) {
	if a.Withdraw {
		delete(n.expiry, a.Slot())
	} else {
		n.expiry[a.Slot()] = a.ExpiresAt()
	}
}

func (n *Node) wake() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// rebroadcast re-signs and re-sends every own announcement: at once without pacing, else
// by queueing those not already waiting, the soonest to expire first (a round that
// outlasts Refresh is not doubled).
func (n *Node) rebroadcast() {
	n.mu.Lock()
	if n.pace != nil {
		slots := slices.Collect(maps.Keys(n.own))
		slices.SortFunc(slots, func(a, b string) int {
			if c := n.expiry[a].Compare(n.expiry[b]); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		for _, s := range slots {
			n.out.push(s, false)
		}
		n.mu.Unlock()
		n.wake()
		return
	}
	own := slices.Collect(maps.Values(n.own))
	n.mu.Unlock()
	for _, a := range own {
		wire, _, err := n.signer.Sign(a, n.o.TTL)
		if err == nil {
			err = n.serf.UserEvent(AnnounceEvent, wire, false)
		}
		if err != nil {
			n.log.Warn("re-broadcast announcement", "err", err)
		}
	}
}

// sendLoop is the pacer: it sends queued own announcements, freshly signed, at most
// AnnounceRate per second, until ctx ends.
func (n *Node) sendLoop(ctx context.Context) {
	for {
		n.mu.Lock()
		pending := n.out.len()
		n.mu.Unlock()
		if pending == 0 {
			select {
			case <-ctx.Done():
				return
			case <-n.kick:
				continue
			}
		}
		if err := n.pace.Wait(ctx); err != nil {
			return
		}
		n.mu.Lock()
		soon := time.Now().Add(n.o.Refresh)
		slot, ok := n.out.pop(func(s string) bool { return n.expiry[s].Before(soon) })
		a, own := n.own[slot]
		if !own {
			a, ok = n.withdrawals[slot]
			delete(n.withdrawals, slot)
		}
		ttl := n.ttlLocked()
		n.mu.Unlock()
		if !ok {
			continue
		}
		wire, signed, err := n.signer.Sign(a, ttl)
		if err == nil {
			err = n.serf.UserEvent(AnnounceEvent, wire, false)
		}
		if err != nil {
			n.log.Warn("broadcast announcement", "slot", slot, "err", err)
			continue
		}
		n.mu.Lock()
		if _, cur := n.own[slot]; cur == !signed.Withdraw {
			n.sentLocked(signed)
		}
		n.mu.Unlock()
	}
}

// Broadcast sends raw bytes as a serf user event (the local API's POST /v1/events).
func (n *Node) Broadcast(name string, payload []byte, coalesce bool) error {
	if err := n.serf.UserEvent(name, payload, coalesce); err != nil {
		return fmt.Errorf("mesh: user event %q: %w", name, err)
	}
	return nil
}

// State is the verified announcement state.
func (n *Node) State() *announce.State { return n.recv.State() }

// Receiver exposes rejection counts.
func (n *Node) Receiver() *announce.Receiver { return n.recv }

// Beacons is the beaconer (nil when beacons are disabled).
func (n *Node) Beacons() *beacon.Beaconer { return n.beacons }

// GossipBytesSent is how many bytes of gossip this node has sent.
func (n *Node) GossipBytesSent() uint64 { return n.sent.Load() }

// Serf is the underlying serf instance (for the agent's advanced uses).
func (n *Node) Serf() *serf.Serf { return n.serf }

// Member is a mesh member as the CLI and the local API show it.
type Member struct {
	Name    string            `json:"name"`
	Addr    string            `json:"addr"`
	Status  string            `json:"status"`
	Cluster string            `json:"cluster"`
	Tags    map[string]string `json:"tags"`
}

// Members lists the members serf knows, sorted by name.
func (n *Node) Members() []Member {
	var out []Member
	for _, m := range n.serf.Members() {
		out = append(out, Member{Name: m.Name, Addr: net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))),
			Status: m.Status.String(), Cluster: m.Tags[TagCluster], Tags: m.Tags})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// CountMembers is how many members ms lists and how many of them are alive: the counts
// the local API's status shows, from a live node's Members or a saved State's.
func CountMembers(ms []Member) (members, alive int) {
	for _, m := range ms {
		if m.Status == serf.StatusAlive.String() {
			alive++
		}
	}
	return len(ms), alive
}

// RotateGossipKey installs key on every member, makes it the primary key, then removes
// every other key, so the mesh keeps talking throughout (serf's keyring install/use/remove).
func (n *Node) RotateGossipKey(key []byte) error {
	km := n.serf.KeyManager()
	k := base64.StdEncoding.EncodeToString(key)
	check := func(step string, r *serf.KeyResponse, err error) error {
		if err != nil {
			return fmt.Errorf("mesh: gossip key %s: %w", step, err)
		}
		if r.NumErr > 0 {
			return fmt.Errorf("mesh: gossip key %s failed on %d of %d nodes: %v", step, r.NumErr, r.NumNodes, r.Messages)
		}
		return nil
	}
	r, err := km.InstallKey(k)
	if err := check("install", r, err); err != nil {
		return err
	}
	r, err = km.UseKey(k)
	if err := check("use", r, err); err != nil {
		return err
	}
	list, err := km.ListKeys()
	if err := check("list", list, err); err != nil {
		return err
	}
	for old := range list.Keys {
		if old == k {
			continue
		}
		r, err := km.RemoveKey(old)
		if err := check("remove", r, err); err != nil {
			return err
		}
	}
	return nil
}

// GossipKeys lists the keys in use across the mesh with how many nodes hold each.
func (n *Node) GossipKeys() (map[string]int, error) {
	r, err := n.serf.KeyManager().ListKeys()
	if err != nil {
		return nil, fmt.Errorf("mesh: list gossip keys: %w", err)
	}
	return r.Keys, nil
}

// SavedState is what the node persists under StateKey.
type SavedState struct {
	Node          string                  `json:"node"`
	Cluster       string                  `json:"cluster"`
	SavedAt       time.Time               `json:"saved_at"`
	Members       []Member                `json:"members"`
	Announcements []announce.Announcement `json:"announcements"`
}

// LoadState reads the persisted mesh state (for `patronus status` and restarts).
func LoadState(ctx context.Context, kv KV) (SavedState, bool, error) {
	var s SavedState
	v, ok, err := kv.Get(ctx, StateKey)
	if err != nil || !ok {
		return s, ok, err
	}
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return s, false, fmt.Errorf("mesh: decode %s: %w", StateKey, err)
	}
	return s, true, nil
}

func (n *Node) restore(ctx context.Context) {
	s, ok, err := LoadState(ctx, n.o.Store)
	if err != nil {
		n.log.Warn("saved mesh state unreadable, starting empty", "err", err)
		return
	}
	if ok {
		n.recv.Restore(s.Announcements)
	}
}

type persistMark struct {
	version uint64
	members string
	at      time.Time
}

func (n *Node) persist(ctx context.Context, force bool) {
	if n.o.Store == nil {
		return
	}
	members := n.Members()
	var sig strings.Builder
	for _, m := range members {
		sig.WriteString(m.Name + "=" + m.Status + ";")
	}
	v := n.recv.State().Version()
	n.mu.Lock()
	unchanged := n.lastPersist.version == v && n.lastPersist.members == sig.String()
	if unchanged && !force {
		n.mu.Unlock()
		return
	}
	n.lastPersist = persistMark{version: v, members: sig.String(), at: time.Now()}
	n.mu.Unlock()
	b, err := json.Marshal(SavedState{Node: n.o.NodeName, Cluster: n.o.ClusterID, SavedAt: time.Now().UTC(),
		Members: members, Announcements: n.recv.State().List()})
	if err == nil {
		err = n.o.Store.Set(ctx, StateKey, string(b))
	}
	if err != nil {
		n.log.Warn("persist mesh state", "err", err)
	}
}
