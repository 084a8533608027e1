// Package nodenet is pod networking across the nodes of one cluster: each node gets its
// own pod block (the Node's spec.podCIDRs when kube-controller-manager allocates them,
// otherwise a block of the cluster CIDR claimed by the agents among themselves through one
// Lease per block, the API server's create being the compare-and-swap), writes the CNI
// conflist for that block, and routes every other node's block: directly via the peer's
// underlay address when both are on one L2 segment, else over the VXLAN device ptx0. Pod
// traffic leaving the cluster CIDR is masqueraded to the node address; pod-to-pod never is.
//
// The pure parts (block arithmetic, claim resolution) are in nodenet/alloc; the plan is
// computed by Compute and applied by a Datapath (netlink + nftables in one namespace).
package nodenet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

// Defaults of Options.
const (
	DefaultNamespace    = "kube-system"
	DefaultBlockSize    = 24
	DefaultConfListPath = "/etc/cni/net.d/" + manifests.ConfListName
	DefaultResync       = 10 * time.Second
	DefaultMasqTable    = "patronus"
	DefaultMasqChain    = "nodenet-masq"
	// DefaultOrphanGrace is how long a block Lease whose holder has no Node object is
	// kept before any agent releases it (a Node deleted while no agent was watching).
	DefaultOrphanGrace = 5 * time.Minute
	// EventReasonBlockLost is the reason of the Warning Event on the Node when its saved
	// block is held by another node and pods still have addresses in it.
	EventReasonBlockLost = "PodBlockLost"
)

// Options configure a Controller. Zero values take the defaults noted.
type Options struct {
	// Client talks to the API server. Required.
	Client kclient.Kube
	// NodeName is this node's Node object name. Required.
	NodeName string
	// Namespace holds the block Leases (default kube-system: the agent's POD_NAMESPACE).
	Namespace string
	// ClusterCIDR is the ConfigMap's cluster-cidr: blocks are claimed out of it, and pod
	// traffic to it is never masqueraded. Zero with no Node podCIDR: the node keeps the
	// seed's conflist (single node) and installs no masquerade.
	ClusterCIDR netip.Prefix
	// BlockSize is the ConfigMap's node-block-size (default 24).
	BlockSize int

	// DB is the node database: the claimed block is kept at kv key nodenet/block, and its
	// pods are checked when a block is lost. Optional (tests).
	DB *store.DB

	// ConfListPath is where the conflist is written once the block is known (default
	// /etc/cni/net.d/10-patronus.conflist). Empty directory part is not allowed.
	ConfListPath string
	// BaseConfList is the conflist whose IPAM range is replaced by the block (default the
	// embedded manifests.ConfList, the one install-cni writes).
	BaseConfList []byte

	// NetNSPath is the namespace whose routes, VXLAN device and nftables are managed
	// ("" = the caller's; tests give a node namespace).
	NetNSPath string
	// Datapath overrides the netlink datapath (tests); NetNSPath is then unused.
	Datapath Datapath
	// NodeIP overrides the underlay address (default the Node's first IPv4 InternalIP).
	NodeIP netip.Addr

	// NoMasquerade disables the masquerade chain (and removes one an earlier run made).
	NoMasquerade bool
	// KeepSourceTo are destinations besides the cluster never masqueraded to: the remote
	// clusters' pod CIDRs, whose WireGuard peers accept only pod sources (a masqueraded
	// packet would be dropped there as coming from a disallowed address).
	KeepSourceTo []netip.Prefix
	// MasqTable and MasqChain name the nftables inet table and chain (defaults patronus,
	// nodenet-masq).
	MasqTable, MasqChain string

	// Encrypt is node-to-node encryption (ConfigMap node-encryption; default none).
	Encrypt Encrypt

	// Resync is how often the datapath is re-applied and the claim re-verified (default 10s).
	Resync time.Duration
	// OrphanGrace (default 5m): see DefaultOrphanGrace.
	OrphanGrace time.Duration

	// Announce, if set, is called with the signed-announcement template of the node's
	// block each time the block is (re)acquired (BlockAnnouncement: kind podblock, its own
	// slot per origin, so mesh.Node.Announce can take it as is). Status().Block and
	// ClaimedAt give the same to a caller whose mesh starts later.
	Announce func(announce.Announcement) error

	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// LostPod is a pod on this node still holding an address of a block the node lost.
type LostPod struct {
	Namespace   string         `json:"namespace"`
	Name        string         `json:"name"`
	ContainerID string         `json:"containerID"`
	IPs         []netip.Prefix `json:"ips"`
	Block       netip.Prefix   `json:"block"`
}

// Status is what the controller has done.
type Status struct {
	Block  netip.Prefix `json:"block"`  // zero until known
	Source string       `json:"source"` // SourceNode | SourceLease | SourceGossip | "" (seed defaults)
	// ClaimedAt is when the node got its block (kept across restarts): the seniority its
	// signed mesh announcement carries.
	ClaimedAt time.Time `json:"claimedAt,omitzero"`
	// ConfList is the path written (empty while not written).
	ConfList string  `json:"conflist,omitempty"`
	Peers    int     `json:"peers"` // peers with a block and an address
	Routes   []Route `json:"routes"`
	VXLAN    bool    `json:"vxlan"`
	// Conflicts are peer blocks not routed (overlaps).
	Conflicts []string `json:"conflicts,omitempty"`
	// Lost are pods still holding addresses of a block this node lost.
	Lost      []LostPod `json:"lostPods,omitempty"`
	LastError string    `json:"lastError,omitempty"`

	// Encryption is the node-to-node encryption mode (EncryptionNone | EncryptionWireGuard).
	Encryption string `json:"encryption"`
	// WireGuard is the node device while encryption is on.
	WireGuard *WGStatus `json:"wireguard,omitempty"`
	// PeerStates say, with encryption on, for every routed peer whether its traffic is
	// encrypted (and its last handshake) or why not.
	PeerStates []PeerState `json:"peerStates,omitempty"`
	// Strict is strict node encryption (Encrypt.Strict) in force; StrictDropped the
	// packets it has dropped (as of the last reconcile; MetricStrictDropped).
	Strict        bool   `json:"strict,omitempty"`
	StrictDropped uint64 `json:"strictDropped,omitempty"`
}

// WGStatus is the node-to-node WireGuard device.
type WGStatus struct {
	Device         string `json:"device"`
	PublicKey      string `json:"publicKey"`
	Port           int    `json:"port"`
	MTU            int    `json:"mtu,omitempty"`
	Implementation string `json:"implementation,omitempty"` // kernel | userspace
	// Peers is how many peers the device has now.
	Peers int    `json:"peers"`
	Error string `json:"error,omitempty"`
}

// PeerState is one peer node under encryption.
type PeerState struct {
	Node      string         `json:"node"`
	Blocks    []netip.Prefix `json:"blocks"`
	Encrypted bool           `json:"encrypted"`
	PublicKey string         `json:"publicKey,omitempty"`
	Endpoint  string         `json:"endpoint,omitempty"`
	// LastHandshake is zero until the first handshake (WireGuard handshakes on traffic).
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes,omitempty"`
	TxBytes       int64     `json:"txBytes,omitempty"`
	Reason        string    `json:"reason,omitempty"` // why not encrypted
	// Dropped is set when strict mode drops the pod traffic to this peer instead
	// (StrictDropped, or "dropped: <reason> (strict)").
	Dropped string `json:"dropped,omitempty"`
}

// Controller runs per-node pod networking for one node.
type Controller struct {
	o       Options
	log     *slog.Logger
	claimer *claimer

	mu     sync.Mutex
	status Status
	ready  chan struct{}
	once   sync.Once
	wgLive WGLink // the device Status reads handshakes from (under mu)

	// Encryption state, used by the reconcile goroutine only.
	wgLink    WGLink
	wgKey     wgtypes.Key
	wgUp      bool   // the device is as wanted: peers may be encrypted
	wgRemoved bool   // encryption off: the device of an earlier run is gone
	wgPlain   string // the plain peers last logged
	// wgSpec is the device as last ensured (wgSpecSet: once), for a key rotation.
	wgSpec    WGSpec
	wgSpecSet bool
	// wgPeerKeys is each peer node's key as last configured: a change is a rotation.
	wgPeerKeys map[string]wgtypes.Key
	// rotate takes RotateKey's requests to the reconcile goroutine (rotate.go).
	rotate chan rotateReq
	// wgCreated is when wgKey was made (Encrypt.KeyRotation counts from it);
	// rotateRetry is the earliest next try after a failed periodic rotation.
	wgCreated, rotateRetry time.Time
	// selfGateway: this node's Node is marked a gateway (reconcile goroutine only).
	selfGateway bool
	// relay are the claims this node announces on behalf of nodes that run no mesh
	// (relay.go; under mu).
	relay []alloc.Claim
	// strictBase + strictLast is the strict chain's drop total across rewrites (under mu).
	strictBase, strictLast uint64
}

// New checks o and makes a controller.
func New(o Options) (*Controller, error) {
	if o.Client == nil {
		return nil, errors.New("nodenet: Options.Client is required")
	}
	if o.NodeName == "" {
		return nil, errors.New("nodenet: Options.NodeName is required")
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.ClusterCIDR.IsValid() {
		o.ClusterCIDR = o.ClusterCIDR.Masked()
		if err := alloc.Validate(o.ClusterCIDR, o.BlockSize); err != nil {
			return nil, err
		}
	}
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
		o.Resync = DefaultResync
	}
	if o.OrphanGrace <= 0 {
		o.OrphanGrace = DefaultOrphanGrace
	}
	if o.MasqTable == "" {
		o.MasqTable = DefaultMasqTable
	}
	if o.MasqChain == "" {
		o.MasqChain = DefaultMasqChain
	}
	if err := o.Encrypt.check(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Controller{o: o, log: o.Logger.With("controller", "nodenet"), ready: make(chan struct{}), rotate: make(chan rotateReq)}
	c.status.Encryption = o.Encrypt.Mode
	c.claimer = &claimer{client: o.Client, ns: o.Namespace, node: o.NodeName, cluster: o.ClusterCIDR,
		bits: o.BlockSize, kv: dbKV(o.DB), log: c.log, now: o.Now}
	return c, nil
}

// Ready is closed once the node's conflist is written (or the node keeps the seed's
// defaults): the node is ready for pods.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Status returns a copy of the current status (with encryption on, the peers' handshakes
// as the device shows them now).
func (c *Controller) Status() Status {
	s, live := c.snapshot()
	if live != nil && s.WireGuard != nil {
		if d, err := live.State(); err == nil && d != nil {
			s.WireGuard.Peers = len(d.Peers)
			fillHandshakes(s.PeerStates, d)
		}
	}
	return s
}

// RelayClaims are the claims of the cluster's nodes that run no mesh (not marked
// gateways while this node is), as of the last reconcile, for this node to announce on
// their behalf (RelayAnnouncement); none when this node is not a marked gateway.
func (c *Controller) RelayClaims() []alloc.Claim {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.relay)
}

// snapshot is a copy of the recorded status and the live WireGuard device, without
// asking the device (Status does): the reconcile's own reads need no handshakes.
func (c *Controller) snapshot() (Status, WGLink) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Routes = slices.Clone(s.Routes)
	s.Conflicts = slices.Clone(s.Conflicts)
	s.Lost = slices.Clone(s.Lost)
	s.PeerStates = slices.Clone(s.PeerStates)
	if s.WireGuard != nil {
		w := *s.WireGuard
		s.WireGuard = &w
	}
	return s, c.wgLive
}

// Run acquires the node's block, writes the conflist, and keeps the node-to-node routes
// following the Node objects and block Leases until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	dp := c.o.Datapath
	if dp == nil {
		var err error
		if dp, err = OpenDatapath(c.o.NetNSPath); err != nil {
			return err
		}
		defer dp.Close()
	}
	defer c.closeWG()
	trigger := make(chan struct{}, 1)
	kick := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	deleted := make(chan string, 64)

	nodeFactory := kclient.NewFactory(c.o.Client, nil, kclient.FactoryOptions{})
	nodes := nodeFactory.Nodes()
	// Only names, addresses and podCIDRs are read: drop the bulky parts of every Node.
	if err := nodes.SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			n.ManagedFields, n.Status.Images, n.Status.Conditions = nil, nil, nil
		}
		return obj, nil
	}); err != nil {
		return fmt.Errorf("nodenet: node informer: %w", err)
	}
	nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { kick() },
		UpdateFunc: func(old, cur any) { kick() },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				select {
				case deleted <- n.Name:
				default: // the orphan sweep catches it
				}
			}
			kick()
		},
	})
	leaseFactory := kclient.NewFactory(c.o.Client, nil, kclient.FactoryOptions{Namespace: c.o.Namespace,
		Tweak: func(lo *metav1.ListOptions) { lo.LabelSelector = LeaseSelector }})
	leases := leaseFactory.Leases()
	leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { kick() }, UpdateFunc: func(any, any) { kick() }, DeleteFunc: func(any) { kick() },
	})
	nodeFactory.Start(ctx.Done())
	leaseFactory.Start(ctx.Done())
	defer nodeFactory.Shutdown()
	defer leaseFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.HasSynced, leases.HasSynced) {
		return ctx.Err()
	}
	nl, ll := corelisters.NewNodeLister(nodes.GetIndexer()), coordinationlisters.NewLeaseLister(leases.GetIndexer()).Leases(c.o.Namespace)

	tick := time.NewTicker(c.o.Resync)
	defer tick.Stop()
	kick()
	for {
		select {
		case <-ctx.Done():
			return nil
		case name := <-deleted:
			if name == c.o.NodeName {
				continue // our own Node: an agent never releases its own claim
			}
			if rel, err := ReleaseNode(ctx, c.o.Client, c.o.Namespace, name); err != nil {
				c.log.Warn("release blocks of deleted node", "node", name, "err", err)
			} else if len(rel) > 0 {
				c.log.Info("released blocks of deleted node", "node", name, "blocks", rel)
			}
			continue
		case req := <-c.rotate:
			c.serveRotate(req, func() error { return c.runReconcile(ctx, dp, nl, ll) })
			continue
		case <-trigger:
		case <-tick.C:
			c.sweepOrphans(ctx, nl, ll)
		}
		c.runReconcile(ctx, dp, nl, ll)
		c.rotateIfDue(ctx, func() error { return c.runReconcile(ctx, dp, nl, ll) })
	}
}

// runReconcile reconciles and records the outcome in the status.
func (c *Controller) runReconcile(ctx context.Context, dp Datapath, nl nodeLister, ll leaseLister) error {
	err := c.reconcile(ctx, dp, nl, ll)
	c.mu.Lock()
	c.status.LastError = ""
	if err != nil {
		c.status.LastError = err.Error()
	}
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("reconcile", "err", err)
	}
	return err
}

type nodeLister interface {
	Get(name string) (*corev1.Node, error)
	List(selector labels.Selector) ([]*corev1.Node, error)
}

type leaseLister interface {
	List(selector labels.Selector) ([]*coordinationv1.Lease, error)
}

// reconcile is level-based: it reads the Node and Lease caches and the kernel, and makes
// the block, the conflist and the datapath what they should be.
func (c *Controller) reconcile(ctx context.Context, dp Datapath, nl nodeLister, ll leaseLister) error {
	c.refreshLost(ctx) // pods of a lost block recreated since are no longer reported
	self, err := nl.Get(c.o.NodeName)
	if err != nil {
		return fmt.Errorf("nodenet: own Node %s: %w", c.o.NodeName, err)
	}
	c.claimer.nodeUID = self.UID
	c.selfGateway = isGateway(self)
	all, err := nl.List(labels.Everything())
	if err != nil {
		return err
	}
	ls, err := ll.List(labels.Everything())
	if err != nil {
		return err
	}
	relay := relayClaims(c.o.NodeName, all, ls, c.o.ClusterCIDR)
	c.mu.Lock()
	c.relay = relay
	c.mu.Unlock()
	// Without a block of its own (none free, API server away) the node still routes to
	// its peers: their pods must stay reachable from the host and from pods already here.
	blockErr := c.ensureBlock(ctx, self, ls)

	held := map[string][]netip.Prefix{}
	for _, l := range ls {
		if b, ok := leaseBlock(l); ok && l.Spec.HolderIdentity != nil && l.DeletionTimestamp == nil {
			held[*l.Spec.HolderIdentity] = append(held[*l.Spec.HolderIdentity], b)
		}
	}
	var peers []Peer
	for _, n := range all {
		if n.Name == c.o.NodeName || n.DeletionTimestamp != nil {
			continue
		}
		p := Peer{Name: n.Name, Key: ParseWGKey(n.Annotations[AnnotationWGKey]), Gateway: isGateway(n)}
		p.Addr, _ = nodeIP(n)
		if b, ok := nodeBlock(n); ok {
			p.Blocks = []netip.Prefix{b}
		} else {
			p.Blocks = held[n.Name]
		}
		if p.Addr.IsValid() && len(p.Blocks) > 0 {
			peers = append(peers, p)
		}
	}

	addr := c.o.NodeIP
	if !addr.IsValid() {
		addr, _ = nodeIP(self)
	}
	progErr := c.program(dp, addr, peers)
	return errors.Join(blockErr, progErr, c.publishKey(ctx, self))
}

// program makes the datapath route peers (from this node's underlay address addr) and
// masquerade the node's block, and records the outcome in the status.
func (c *Controller) program(dp Datapath, addr netip.Addr, peers []Peer) error {
	var err error
	st, _ := c.snapshot()
	local := Local{Name: c.o.NodeName, Block: st.Block, Addr: addr, Remote: c.o.KeepSourceTo, Gateway: c.selfGateway}
	var errs []error
	if local.Addr.IsValid() {
		if local.Dev, local.Net, err = dp.LocalLink(local.Addr); err != nil {
			errs = append(errs, err)
		}
	} else if len(peers) > 0 {
		errs = append(errs, fmt.Errorf("nodenet: node %s has no IPv4 underlay address: cannot route to peers", c.o.NodeName))
	}
	// Strict drops first: the routes and the device below may change (or fail) next.
	if err := c.setStrict(dp, st.Block, strictCluster(c.o.ClusterCIDR, peers)); err != nil {
		errs = append(errs, err)
	}
	enc := c.o.Encrypt.Mode == EncryptionWireGuard
	if enc && local.Dev != "" {
		local.Encrypt, local.WGPort = true, c.o.Encrypt.Port
		if err := c.ensureWG(local); err != nil {
			errs = append(errs, err)
		}
		if c.wgUp {
			local.Key = c.wgKey.PublicKey()
		}
	}
	plan := Compute(local, peers)
	if local.Dev != "" {
		// New peers before their routes; and routes back to plain before the device goes.
		if enc && c.wgUp {
			if err := c.configureWG(plan); err != nil {
				errs = append(errs, err)
			}
		}
		if err := dp.Apply(local, plan); err != nil {
			errs = append(errs, err)
		}
		if !enc && !c.wgRemoved {
			if err := c.removeWG(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	c.recordPeers(enc, peers, plan)
	m := Masquerade{Table: c.o.MasqTable, Chain: c.o.MasqChain}
	if !c.o.NoMasquerade {
		if st.Block.IsValid() {
			m.Sources = []netip.Prefix{st.Block}
			m.Cluster = []netip.Prefix{st.Block}
			if c.o.ClusterCIDR.IsValid() {
				m.Cluster = []netip.Prefix{c.o.ClusterCIDR}
			}
			for _, p := range peers {
				for _, b := range p.Blocks {
					if !slices.ContainsFunc(m.Cluster, func(x netip.Prefix) bool { return x.Contains(b.Addr()) && x.Bits() <= b.Bits() }) {
						m.Cluster = append(m.Cluster, b) // podCIDRs outside cluster-cidr
					}
				}
			}
			m.Cluster = append(m.Cluster, c.o.KeepSourceTo...)
		}
	}
	// With NoMasquerade, m has no sources: SetMasquerade removes a chain left by an
	// earlier run that had masquerade on.
	if err := dp.SetMasquerade(m); err != nil {
		errs = append(errs, err)
	}
	c.mu.Lock()
	c.status.Peers, c.status.Routes, c.status.VXLAN, c.status.Conflicts = len(peers), plan.Routes, plan.VXLAN, plan.Conflicts
	c.mu.Unlock()
	for _, cf := range plan.Conflicts {
		c.log.Warn("peer block not routed", "reason", cf)
	}
	return errors.Join(errs...)
}

// ensureBlock decides the node's block and writes the conflist when it changes.
func (c *Controller) ensureBlock(ctx context.Context, self *corev1.Node, ls []*coordinationv1.Lease) error {
	st, _ := c.snapshot()
	if b, ok := nodeBlock(self); ok {
		if st.Block != b || st.Source != SourceNode {
			c.log.Info("pod block from Node spec.podCIDRs", "block", b)
			if err := c.claimer.save(ctx, savedBlock{Block: b, Source: SourceNode, ClaimedAt: c.o.Now()}); err != nil {
				return err
			}
			// A block claimed before the Node got its podCIDR is no longer used.
			for _, l := range ls {
				if h := l.Spec.HolderIdentity; h != nil && *h == c.o.NodeName {
					if rel, err := ReleaseNode(ctx, c.o.Client, c.o.Namespace, c.o.NodeName); err != nil {
						c.log.Warn("release own block lease", "err", err)
					} else {
						c.log.Info("released own block lease: the Node has a podCIDR now", "blocks", rel)
					}
					break
				}
			}
			return c.useBlock(ctx, b, SourceNode)
		}
		return c.writeConfList(b)
	}
	if !c.o.ClusterCIDR.IsValid() {
		// Single node, nothing configured: the seed's conflist stays as install-cni wrote it.
		c.once.Do(func() {
			c.log.Info("no Node podCIDR and no cluster-cidr: keeping the installed conflist")
			close(c.ready)
		})
		return nil
	}
	if st.Source == SourceLease && st.Block.IsValid() {
		// Still ours in the cache? Then nothing to ask the API server.
		for _, l := range ls {
			if b, ok := leaseBlock(l); ok && b == st.Block && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == c.o.NodeName {
				return c.writeConfList(st.Block)
			}
		}
	}
	block, lost, err := c.claimer.Acquire(ctx)
	if lost.IsValid() {
		c.reportLost(ctx, lost)
	}
	if err != nil {
		return err
	}
	if block != st.Block || st.Source != SourceLease {
		return c.useBlock(ctx, block, SourceLease)
	}
	return c.writeConfList(block)
}

func (c *Controller) useBlock(ctx context.Context, b netip.Prefix, source string) error {
	at := c.o.Now()
	if s, ok := c.claimer.load(ctx); ok && s.Block == b && !s.ClaimedAt.IsZero() {
		at = s.ClaimedAt
	}
	c.mu.Lock()
	c.status.Block, c.status.Source, c.status.ClaimedAt = b, source, at
	c.mu.Unlock()
	if c.o.Announce != nil {
		if err := c.o.Announce(BlockAnnouncement(b, at)); err != nil {
			c.log.Warn("announce pod block", "block", b, "err", err)
		}
	}
	return c.writeConfList(b)
}

func (c *Controller) writeConfList(b netip.Prefix) error {
	data, err := RenderConfList(c.o.BaseConfList, b)
	if err != nil {
		return err
	}
	changed, err := WriteFileAtomic(c.o.ConfListPath, data, 0o644)
	if err != nil {
		return err
	}
	if changed {
		c.log.Info("wrote CNI conflist", "path", c.o.ConfListPath, "block", b)
	}
	c.mu.Lock()
	c.status.ConfList = c.o.ConfListPath
	c.mu.Unlock()
	c.once.Do(func() { close(c.ready) })
	return nil
}

// BlockAnnouncement is the signed mesh announcement of a node's block claim (kind
// podblock: the block and when it was claimed; the Signer fills origin, cluster,
// sequence and expiry). In edge mode these are the claims (MeshClaims); with an API
// server the Lease decides and the announcement tells the mesh.
func BlockAnnouncement(block netip.Prefix, claimedAt time.Time) announce.Announcement {
	return announce.Announcement{Kind: announce.KindPodBlock, Prefixes: []netip.Prefix{block.Masked()}, Claimed: claimedAt.UnixMilli()}
}

// BlockAnnouncementKey is BlockAnnouncement carrying the node's node-to-node WireGuard
// public key (base64; "" none) in its Tunnel field (no endpoints: a node's endpoint is its
// underlay address and the cluster's port), so edge-mode peers learn the key signed.
func BlockAnnouncementKey(block netip.Prefix, claimedAt time.Time, pub string) announce.Announcement {
	a := BlockAnnouncement(block, claimedAt)
	if pub != "" {
		a.Tunnel = &announce.Tunnel{PublicKey: pub}
	}
	return a
}

// LostPods returns the pods in pods holding an address in block.
func LostPods(pods []store.Pod, block netip.Prefix) []LostPod {
	var out []LostPod
	for _, p := range pods {
		var ips []netip.Prefix
		for _, ip := range p.IPs {
			if block.Contains(ip.Addr()) {
				ips = append(ips, ip)
			}
		}
		if len(ips) > 0 {
			out = append(out, LostPod{Namespace: p.Namespace, Name: p.Name, ContainerID: p.ContainerID, IPs: ips, Block: block})
		}
	}
	return out
}

// reportLost records the pods still holding addresses of lost, logs them, and raises a
// Warning Event on the Node.
func (c *Controller) reportLost(ctx context.Context, lost netip.Prefix) {
	var pods []LostPod
	if c.o.DB != nil {
		ps, err := c.o.DB.ListPods(ctx)
		if err != nil {
			c.log.Warn("list pods for lost block", "err", err)
		}
		pods = LostPods(ps, lost)
	}
	c.mu.Lock()
	c.status.Lost = append(slices.DeleteFunc(c.status.Lost, func(l LostPod) bool { return l.Block == lost }), pods...)
	c.mu.Unlock()
	names := make([]string, 0, len(pods))
	for _, p := range pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	c.log.Warn("pod block lost to another node", "block", lost, "pods", names)
	msg := fmt.Sprintf("pod block %s is held by another node; %d pods still hold addresses in it", lost, len(pods))
	if len(names) > 0 {
		msg += ": " + strings.Join(names, ", ")
	}
	if c.o.Client == nil {
		return // edge mode: no API server to hold an Event
	}
	now := metav1.NewTime(c.o.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: c.o.NodeName + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: c.o.NodeName, UID: c.claimer.nodeUID, APIVersion: "v1"},
		Reason:         EventReasonBlockLost, Message: msg, Type: corev1.EventTypeWarning,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: "patronus-agent", Host: c.o.NodeName},
	}
	if _, err := c.o.Client.Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Warn("event for lost block", "err", err)
	}
}

// sweepOrphans releases block Leases whose holder has had no Node object for the grace
// period (their Node was deleted while no agent watched).
func (c *Controller) sweepOrphans(ctx context.Context, nl nodeLister, ll leaseLister) {
	ls, err := ll.List(labels.Everything())
	if err != nil {
		return
	}
	for _, l := range ls {
		h := l.Spec.HolderIdentity
		if h == nil || *h == c.o.NodeName || c.o.Now().Sub(l.CreationTimestamp.Time) < c.o.OrphanGrace {
			continue
		}
		if _, err := nl.Get(*h); !apierrors.IsNotFound(err) {
			continue
		}
		if rel, err := ReleaseNode(ctx, c.o.Client, c.o.Namespace, *h); err == nil && len(rel) > 0 {
			c.log.Info("released blocks of a node that no longer exists", "node", *h, "blocks", rel)
		}
	}
}

// StatusPath is where HTTPHandler is meant to be mounted on the agent's local API.
const StatusPath = "GET /v1/nodenet"

// HTTPHandler serves Status as JSON (mount at StatusPath; `patronus status` can show the
// block and the pods of a lost block from it).
func (c *Controller) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c.Status())
	})
}
