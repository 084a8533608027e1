package nodenet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

// SourceGossip is the block source in edge mode (a claim resolved through the mesh).
const SourceGossip = "gossip"

// EdgeMember is one node as the gossip mesh shows it: its underlay address and its claim
// in FormatClaim form ("" while it has none), e.g. a Serf member and one of its tags.
type EdgeMember struct {
	Name  string
	Addr  netip.Addr
	Claim string
	// Key is its node-to-node WireGuard public key (base64, from its signed claim; ""
	// none).
	Key string
}

// EdgeOptions configure an EdgeController. Zero values take Options' defaults.
type EdgeOptions struct {
	NodeName string // required
	// NodeIP is this node's underlay address (required: there is no Node object).
	NodeIP      netip.Addr
	ClusterCIDR netip.Prefix // required
	BlockSize   int

	// Members is the current gossip view (this node may be in it; it is skipped).
	Members func() []EdgeMember
	// Publish spreads this node's claim (FormatClaim form) through the mesh.
	Publish func(claim string) error
	// PublishKey, if set, is used instead of Publish: the claim with the node's
	// node-to-node WireGuard public key (base64; "" none) to spread with it, called again
	// with the same claim when the key changes (a rotation). MeshEdge sets it.
	PublishKey func(claim, publicKey string) error
	// Changes, if set, receives a value whenever the view may have changed (a member
	// joined, left, failed or changed; a claim was announced, withdrawn or expired):
	// the controller then reconciles at once instead of at its next Resync, which stays
	// the safety net. mesh.Node.Subscribe is one (MeshEdge wires it).
	Changes <-chan struct{}
	// ChangeDelay is how long the controller lets a burst of Changes settle before it
	// reconciles (default 300ms; negative: none). A join brings the member, its tags and
	// its claim within a few hundred ms. It was added when reconciling at each change's
	// instant gave TestEdgePartition 10-23 s heals in 4 of 10 runs; traced later, those
	// slow heals were the mesh's local profile not telling one newcomer about the other
	// side's newcomer until a push-pull (fixed in package mesh), whatever this delay.
	// Since that fix, at the same load, 12 runs each: 1.2-5.7 s with the delay,
	// 0.6-2.8 s without (BENCHMARKS.md); the default is unchanged pending more runs.
	ChangeDelay time.Duration

	DB           *store.DB
	ConfListPath string
	BaseConfList []byte
	NetNSPath    string
	Datapath     Datapath

	NoMasquerade         bool
	MasqTable, MasqChain string
	// Encrypt is node-to-node encryption (the key travels in the signed claim: MeshEdge).
	Encrypt Encrypt

	// Resync is how often the view is re-read (default 2s); Trigger re-reads at once.
	Resync time.Duration
	// Settle bounds how long a node with no claim yet (none saved either) waits to learn
	// the claims already made before its first one (default 5s; negative: no wait): it
	// claims as soon as it sees another member and every member's claim, else when Settle
	// has passed. Without it a node that has not joined yet sees nobody, claims a block
	// someone holds, writes it to the conflist and must re-claim seconds later.
	Settle time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// EdgeController is the edge-mode (no API server) counterpart of Controller: the block is
// claimed through the mesh with EdgeClaimer, peers and their blocks come from the gossip
// view (each block to its resolved winner only), and the conflist, routes and
// masquerade are programmed exactly as in API mode. A node that loses its block after a
// partition heals re-claims, rewrites its conflist and reports the pods still holding
// addresses of the lost block (Status().Lost and the log).
type EdgeController struct {
	*Controller
	eo      EdgeOptions
	claimer *EdgeClaimer
	trigger chan struct{}

	settleUntil time.Time // end of the first claim's wait (reconcile only)

	// Re-publishing for members that do not know our claim yet (reconcile only).
	viewKey    string    // the alive members last seen
	repubAt    time.Time // next re-publish
	repubWait  time.Duration
	repubUntil time.Time // end of the re-publishing after a membership change
}

// Bounds of the re-publish backoff while some alive member's claim is unknown.
const (
	repubMin = time.Second
	repubMax = 30 * time.Second
)

// NewEdge checks o and makes an edge-mode controller.
func NewEdge(o EdgeOptions) (*EdgeController, error) {
	if o.NodeName == "" || !o.NodeIP.IsValid() || o.Members == nil || o.Publish == nil && o.PublishKey == nil {
		return nil, errors.New("nodenet: edge mode needs NodeName, NodeIP, Members and Publish")
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if err := alloc.Validate(o.ClusterCIDR, o.BlockSize); err != nil {
		return nil, err
	}
	o.ClusterCIDR = o.ClusterCIDR.Masked()
	if o.ConfListPath == "" {
		o.ConfListPath = DefaultConfListPath
	}
	if o.BaseConfList == nil {
		o.BaseConfList = manifests.ConfList
	}
	if _, err := RenderConfList(o.BaseConfList, netip.MustParsePrefix("10.0.0.0/24")); err != nil {
		return nil, err
	}
	if o.Resync <= 0 {
		o.Resync = 2 * time.Second
	}
	if o.ChangeDelay == 0 {
		o.ChangeDelay = 300 * time.Millisecond
	}
	if o.Settle == 0 {
		o.Settle = 5 * time.Second
	}
	if o.MasqTable == "" {
		o.MasqTable = DefaultMasqTable
	}
	if o.MasqChain == "" {
		o.MasqChain = DefaultMasqChain
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := o.Encrypt.check(); err != nil {
		return nil, err
	}
	c := &Controller{o: Options{NodeName: o.NodeName, NodeIP: o.NodeIP, ClusterCIDR: o.ClusterCIDR, BlockSize: o.BlockSize,
		DB: o.DB, ConfListPath: o.ConfListPath, BaseConfList: o.BaseConfList, NetNSPath: o.NetNSPath, Datapath: o.Datapath,
		NoMasquerade: o.NoMasquerade, MasqTable: o.MasqTable, MasqChain: o.MasqChain, Encrypt: o.Encrypt, Logger: o.Logger, Now: o.Now},
		log: o.Logger.With("controller", "nodenet", "mode", "edge"), ready: make(chan struct{}), rotate: make(chan rotateReq)}
	c.status.Encryption = o.Encrypt.Mode
	return &EdgeController{Controller: c, eo: o, trigger: make(chan struct{}, 1),
		claimer: &EdgeClaimer{Node: o.NodeName, Cluster: o.ClusterCIDR, Bits: o.BlockSize, Now: o.Now}}, nil
}

// Trigger asks for a reconcile now (call it on member join/leave/update events).
func (e *EdgeController) Trigger() {
	select {
	case e.trigger <- struct{}{}:
	default:
	}
}

// Run claims, programs and follows the gossip view until ctx ends.
func (e *EdgeController) Run(ctx context.Context) error {
	dp := e.eo.Datapath
	if dp == nil {
		var err error
		if dp, err = OpenDatapath(e.eo.NetNSPath); err != nil {
			return err
		}
		defer dp.Close()
	}
	defer e.closeWG()
	// A claim saved before a restart keeps its original time (its seniority).
	if e.eo.DB != nil {
		if s, ok := e.kv().load(ctx); ok && s.Source == SourceGossip && s.Block.Bits() == e.eo.BlockSize && e.eo.ClusterCIDR.Contains(s.Block.Addr()) {
			e.claimer.Restore(alloc.Claim{Block: s.Block, Node: e.eo.NodeName, At: s.ClaimedAt})
		}
	}
	tick := time.NewTicker(e.eo.Resync)
	defer tick.Stop()
	published := ""
	run := func() error {
		err := e.reconcile(ctx, dp, &published)
		e.mu.Lock()
		e.status.LastError = ""
		if err != nil {
			e.status.LastError = err.Error()
		}
		e.mu.Unlock()
		if err != nil {
			e.log.Warn("reconcile", "err", err)
		}
		return err
	}
	for {
		run()
		e.rotateIfDue(ctx, run)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-e.trigger:
		case req := <-e.rotate:
			// The reconcile right after re-publishes the claim with the new key.
			e.serveRotate(req, run)
			continue
		case <-e.eo.Changes: // nil: never
			if !e.settleChanges(ctx) {
				return nil
			}
		}
	}
}

// publishedKey is the public key to spread with the claim: the device's once it is up
// (a rotation changes it), else the one configured (MeshEdge loads it before the first
// claim), else none.
func (e *EdgeController) publishedKey() string {
	if e.o.Encrypt.Mode != EncryptionWireGuard {
		return ""
	}
	if e.wgKey != (wgtypes.Key{}) {
		return e.wgKey.PublicKey().String()
	}
	if e.o.Encrypt.Key != (wgtypes.Key{}) {
		return e.o.Encrypt.Key.PublicKey().String()
	}
	return ""
}

// publish spreads wire (and, with PublishKey, pub).
func (e *EdgeController) publish(wire, pub string) error {
	if e.eo.PublishKey != nil {
		return e.eo.PublishKey(wire, pub)
	}
	return e.eo.Publish(wire)
}

func (e *EdgeController) reconcile(ctx context.Context, dp Datapath, published *string) error {
	e.refreshLost(ctx) // pods of a lost block recreated since are no longer reported
	members := e.eo.Members()
	var claims []alloc.Claim
	var unknown []string
	addrs := map[string]netip.Addr{}
	keys := map[string]string{}
	for _, m := range members {
		if m.Name == e.eo.NodeName {
			continue
		}
		addrs[m.Name], keys[m.Name] = m.Addr, m.Key
		if m.Claim == "" {
			unknown = append(unknown, m.Name)
			continue
		}
		c, err := ParseClaim(m.Name, m.Claim)
		if err != nil {
			e.log.Warn("ignoring a malformed claim", "node", m.Name, "err", err)
			continue
		}
		claims = append(claims, c)
	}
	if _, has := e.claimer.Own(); !has && e.eo.Settle > 0 {
		now := e.eo.Now()
		if e.settleUntil.IsZero() {
			e.settleUntil = now.Add(e.eo.Settle)
		}
		if now.Before(e.settleUntil) && (len(addrs) == 0 || len(unknown) > 0) {
			return nil // not ready: still learning the claims already made
		}
	}
	own, lost, err := e.claimer.Step(claims)
	if lost.IsValid() {
		e.log.Warn("pod block lost to an older claim", "block", lost)
		e.reportLost(ctx, lost)
	}
	if err != nil {
		return err
	}
	// published is the claim and the key spread with it: a new key (rotation) is
	// published at once, like a new claim.
	pub := e.publishedKey()
	if wire := FormatClaim(own); wire+" "+pub != *published {
		if err := e.publish(wire, pub); err != nil {
			return fmt.Errorf("nodenet: publish claim: %w", err)
		}
		*published = wire + " " + pub
		if err := e.kv().save(ctx, savedBlock{Block: own.Block, Source: SourceGossip, ClaimedAt: own.At}); err != nil {
			return err
		}
		e.log.Info("claimed pod block through the mesh", "block", own.Block, "claim", wire)
		e.republish("", "", slices.Sorted(maps.Keys(addrs)), unknown) // schedule only
	} else {
		e.republish(wire, pub, slices.Sorted(maps.Keys(addrs)), unknown)
	}
	if st, _ := e.snapshot(); st.Block != own.Block || st.Source != SourceGossip || !st.ClaimedAt.Equal(own.At) {
		e.mu.Lock()
		e.status.Block, e.status.Source, e.status.ClaimedAt = own.Block, SourceGossip, own.At
		e.mu.Unlock()
	}
	if err := e.writeConfList(own.Block); err != nil {
		return err
	}
	// Peers: each block to its resolved winner only, so a doubly claimed block is never
	// routed to the loser while the conflict lasts.
	r := alloc.Resolve(append(claims, own))
	var peers []Peer
	for b, w := range r.Winners {
		if w.Node == e.eo.NodeName || !addrs[w.Node].IsValid() {
			continue
		}
		peers = append(peers, Peer{Name: w.Node, Addr: addrs[w.Node], Blocks: []netip.Prefix{b}, Key: ParseWGKey(keys[w.Node])})
	}
	return e.program(dp, e.eo.NodeIP, peers)
}

// settleChanges waits ChangeDelay after a change, taking the changes that arrive
// meanwhile with it; false when ctx ended.
func (e *EdgeController) settleChanges(ctx context.Context) bool {
	if e.eo.ChangeDelay < 0 {
		return true
	}
	t := time.NewTimer(e.eo.ChangeDelay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-e.eo.Changes:
		case <-t.C:
			return true
		}
	}
}

// republish spreads the claim again, with a backoff (1s doubling to 30s), for 30s after
// the set of alive members changed and for as long as some alive member shows no claim
// (wire "" only schedules: a claim was just published). After a partition heals, a node
// that joined during it ignores events older than its join (serf's Lamport clock of its
// own side), so the other side's first re-broadcasts can be lost and only one sent after
// the clocks met gets through; the mesh's periodic refresh (30s) would be the only retry.
// Such a member may also simply have no claim yet, hence the cap.
func (e *EdgeController) republish(wire, pub string, members, unknown []string) {
	now := e.eo.Now()
	if key := strings.Join(members, ","); key != e.viewKey || wire == "" {
		e.viewKey, e.repubWait, e.repubAt, e.repubUntil = key, repubMin, now, now.Add(repubMax)
		if wire == "" {
			e.repubAt, e.repubWait = now.Add(repubMin), 2*repubMin
			return
		}
	}
	if len(unknown) == 0 && now.After(e.repubUntil) || now.Before(e.repubAt) {
		return
	}
	if err := e.publish(wire, pub); err != nil {
		e.log.Warn("re-publish claim", "err", err)
	}
	e.repubAt = now.Add(e.repubWait)
	e.repubWait = min(2*e.repubWait, repubMax)
}

// kv is the node database's claim record (a claimer used only for load/save).
func (e *EdgeController) kv() *claimer {
	if e.eo.DB == nil {
		return &claimer{}
	}
	return &claimer{kv: e.eo.DB}
}
