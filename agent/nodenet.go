package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/nodenet/alloc"
)

// NodeNetOptions turn per-node pod networking on (Options.NodeNet; nil: off, and then
// something else, install-cni without --no-conflist, must write the conflist). The agent
// then owns the CNI conflist: it writes it once the node's pod block is known (the Node's
// podCIDR, or a block of cluster-cidr claimed with a Lease), or the single-node default
// when neither is configured, and /readyz fails until it has.
type NodeNetOptions struct {
	// NetNSPath is the namespace whose routes, VXLAN device and masquerade chain are
	// managed ("" = the agent's own, the host's in the DaemonSet; tests give a node
	// namespace).
	NetNSPath string
	// NoRoutes writes the conflist but programs no node-to-node routes (another component
	// routes the pod blocks).
	NoRoutes bool
	// Masquerade overrides the ConfigMap key masquerade (nil: the ConfigMap's, default on).
	Masquerade *bool
	// Resync is nodenet's periodic re-apply (default nodenet.DefaultResync).
	Resync time.Duration
	// Encryption is the NODE_ENCRYPTION tier of node-to-node encryption (--node-encryption
	// or $NODE_ENCRYPTION: wireguard | none; "" = the ConfigMap's node-encryption).
	Encryption string
	// EncryptionStrict is the NODE_ENCRYPTION_STRICT tier of strict node encryption
	// (--node-encryption-strict or $NODE_ENCRYPTION_STRICT: true | false; "" = the
	// ConfigMap's node-encryption-strict; config validates it).
	EncryptionStrict string
	// WGMode picks the WireGuard implementation of node encryption (default: kernel if
	// present, else userspace in the agent).
	WGMode wg.Mode
}

// nodeNetState is the running nodenet controller, as seen by the local API.
type nodeNetState struct {
	ctrl  atomic.Pointer[nodenet.Controller]
	ready atomic.Bool  // the conflist exists (written by the agent)
	err   atomic.Value // string: why the controller is not running
	// onBehalf is how many nodes' claims this gateway announces on their behalf now
	// (relayClaims; /v1/status mesh.claimsOnBehalf).
	onBehalf atomic.Int64
}

// nodeNetNotReady says why the node is not ready for pods ("" when it is, or when the
// agent does not manage the conflist).
func (a *agent) nodeNetNotReady() string {
	if a.opts.NodeNet == nil || a.nodeNet.ready.Load() {
		return ""
	}
	if e, _ := a.nodeNet.err.Load().(string); e != "" {
		return "node pod network: " + e
	}
	return "waiting for the node's pod block and CNI conflist"
}

// nodeNetHandlers mount GET /v1/nodenet and POST /v1/nodenet/keys/rotate (`patronus
// keys rotate --node`); they answer 503 until the controller exists (the mux is built
// before the configuration is known).
func (a *agent) nodeNetHandlers() []Handler {
	if a.opts.NodeNet == nil {
		return nil
	}
	with := func(h func(*nodenet.Controller) http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := a.nodeNet.ctrl.Load()
			if c == nil {
				msg := "the node pod network controller is not running"
				if e, _ := a.nodeNet.err.Load().(string); e != "" {
					msg += ": " + e
				}
				http.Error(w, msg, http.StatusServiceUnavailable)
				return
			}
			h(c).ServeHTTP(w, r)
		})
	}
	return []Handler{
		{Pattern: nodenet.StatusPath, Handler: with((*nodenet.Controller).HTTPHandler)},
		{Pattern: "POST " + nodenet.RotatePath, Handler: with((*nodenet.Controller).RotateHandler)},
	}
}

// startNodeNet runs the nodenet controller in wg until ctx ends. A controller that cannot
// start or stops with an error keeps the agent not ready (the node must not take pods
// without its conflist) but does not stop the agent's other work.
func (a *agent) startNodeNet(ctx context.Context, cfg *config.Config, wg *sync.WaitGroup) {
	o := a.opts.NodeNet
	if o == nil {
		return
	}
	fail := func(err error) {
		a.nodeNet.err.Store(err.Error())
		a.log.Error("node pod network not running", "err", err)
	}
	base, err := baseConfList(a.opts.ConflistPath, cfg.ClusterID)
	if err != nil {
		fail(err)
		return
	}
	masq := cfg.Masquerade
	if o.Masquerade != nil {
		masq = *o.Masquerade
	}
	no := nodenet.Options{
		Client: a.clients.Kube, NodeName: a.opts.NodeName, Namespace: a.opts.ConfigNamespace,
		ClusterCIDR: cfg.ClusterCIDR, BlockSize: cfg.NodeBlockSize, DB: a.db,
		ConfListPath: a.opts.ConflistPath, BaseConfList: base, NetNSPath: o.NetNSPath,
		NoMasquerade: !masq, Resync: o.Resync, Logger: a.log,
		Encrypt: nodenet.Encrypt{Mode: cfg.NodeEncryption, WGMode: o.WGMode, Strict: cfg.NodeEncryptionStrict,
			KeyRotation: cfg.NodeEncryptionKeyRotation},
	}
	for _, r := range cfg.RemoteClusters {
		if r.CIDR.IsValid() {
			no.KeepSourceTo = append(no.KeepSourceTo, r.CIDR)
		}
	}
	var dp nodenet.Datapath
	if o.NoRoutes {
		if dp, err = nodenet.OpenDatapath(o.NetNSPath); err != nil {
			fail(err)
			return
		}
		no.Datapath = noRoutes{dp}
	}
	c, err := nodenet.New(no)
	if err != nil {
		if dp != nil {
			dp.Close()
		}
		fail(err)
		return
	}
	a.nodeNet.ctrl.Store(c)
	a.log.Info("node pod network starting", "clusterCIDR", cfg.ClusterCIDR, "blockSize", cfg.NodeBlockSize,
		"conflist", a.opts.ConflistPath, "routes", !o.NoRoutes, "masquerade", masq,
		"nodeEncryption", cfg.NodeEncryption, "nodeEncryptionFrom", cfg.NodeEncryptionSource,
		"nodeEncryptionStrict", cfg.NodeEncryptionStrict, "nodeEncryptionStrictFrom", cfg.NodeEncryptionStrictSource,
		"nodeEncryptionKeyRotation", cfg.NodeEncryptionKeyRotation)
	wg.Go(func() {
		if dp != nil {
			defer dp.Close()
		}
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			fail(err)
		}
	})
	// The claim is also spread as a signed announcement (kind podblock) whenever this node
	// runs the mesh: the Lease or the Node decides, the announcement tells the mesh which
	// node holds which block. The mesh may start after nodenet, or restart.
	meshNode := func() blockAnnouncer {
		if n := a.meshNode.Load(); n != nil {
			return n
		}
		return nil // not a typed nil: the loops compare it with nil
	}
	wg.Go(func() { announceBlock(ctx, blockAnnounceInterval, c.Status, meshNode, a.log) })
	// A marked gateway also announces the claims of the nodes that run no mesh (not
	// marked), on their behalf, from the controller's Node and Lease caches.
	wg.Go(func() {
		relayClaims(ctx, blockAnnounceInterval, c.RelayClaims, meshNode, a.log, func(n int) { a.nodeNet.onBehalf.Store(int64(n)) })
	})
	wg.Go(func() {
		select {
		case <-ctx.Done():
			return
		case <-c.Ready():
		}
		// Without a podCIDR and cluster-cidr nodenet leaves the installed conflist alone;
		// the DaemonSet installs none (install-cni --no-conflist), so write the default.
		if c.Status().ConfList == "" {
			if err := ensureConfList(a.opts.ConflistPath, base); err != nil {
				fail(err)
				return
			}
		}
		a.nodeNet.ready.Store(true)
		a.log.Info("node ready for pods: CNI conflist in place", "path", a.opts.ConflistPath, "block", c.Status().Block)
	})
}

// blockAnnounceInterval is how often announceBlock looks for a new block or mesh node.
const blockAnnounceInterval = 2 * time.Second

// blockAnnouncer signs and spreads an announcement (mesh.Node; it keeps re-signing it
// every refresh until replaced).
type blockAnnouncer interface {
	Announce(announce.Announcement) error
}

// announceBlock announces the node's block (nodenet.BlockAnnouncement) through the mesh
// node mesh() returns (nil while none runs), once per block, claim time and mesh node,
// until ctx ends. A failed announcement is retried at the next tick.
func announceBlock(ctx context.Context, every time.Duration, status func() nodenet.Status, mesh func() blockAnnouncer, log *slog.Logger) {
	type done struct {
		to    blockAnnouncer
		block netip.Prefix
		at    int64
	}
	var last done
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		st, m := status(), mesh()
		if cur := (done{m, st.Block, st.ClaimedAt.UnixMilli()}); m != nil && st.Block.IsValid() && !st.ClaimedAt.IsZero() && cur != last {
			if err := m.Announce(nodenet.BlockAnnouncement(st.Block, st.ClaimedAt)); err != nil {
				log.Warn("announce the node's pod block through the mesh", "block", st.Block, "err", err)
			} else {
				last = cur
				log.Info("announced the node's pod block through the mesh (signed)", "block", st.Block, "source", st.Source)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// relayClaims announces, through the mesh node mesh() returns (nil while none runs), the
// claims claims() returns (nodenet.Controller.RelayClaims: other nodes' claims in the
// API), each signed by this node on its node's behalf (nodenet.RelayAnnouncement), and
// withdraws those that disappear (a Lease released, a Node deleted or marked a gateway),
// checking every tick until ctx ends. The mesh node re-signs what it was given every
// refresh; a new mesh node gets everything again. Failures are retried at the next tick.
// report gets how many nodes' claims are announced.
func relayClaims(ctx context.Context, every time.Duration, claims func() []alloc.Claim, mesh func() blockAnnouncer,
	log *slog.Logger, report func(int)) {
	type sentClaim struct {
		block netip.Prefix
		at    int64
	}
	var to blockAnnouncer
	sent := map[string]sentClaim{} // node -> what to holds for it
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if m := mesh(); m != to {
			to, sent = m, map[string]sentClaim{}
		}
		if to != nil {
			var announced, withdrawn []string
			want := map[string]bool{}
			for _, c := range claims() {
				want[c.Node] = true
				cur := sentClaim{c.Block, c.At.UnixMilli()}
				if old, ok := sent[c.Node]; ok && old == cur {
					continue
				}
				if err := to.Announce(nodenet.RelayAnnouncement(c)); err != nil {
					log.Warn("announce a node's pod block on its behalf", "node", c.Node, "block", c.Block, "err", err)
					continue
				}
				sent[c.Node] = cur
				announced = append(announced, c.Node+"="+c.Block.String())
			}
			for n := range sent {
				if want[n] {
					continue
				}
				if err := to.Announce(nodenet.RelayWithdrawal(n)); err != nil {
					log.Warn("withdraw a node's pod block claim announced on its behalf", "node", n, "err", err)
					continue
				}
				delete(sent, n)
				withdrawn = append(withdrawn, n)
			}
			if len(announced)+len(withdrawn) > 0 {
				slices.Sort(withdrawn)
				log.Info("pod block claims of nodes that run no mesh, announced on their behalf (signed)",
					"announced", announced, "withdrawn", withdrawn, "nodes", len(sent))
			}
		}
		report(len(sent))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// baseConfList is the conflist nodenet renders the node's block into: the installed one
// when present (re-rendering it is idempotent), else the embedded default; its
// sdwan.cluster_id is set to the running cluster id, because the agent refuses to start
// on a conflist naming another cluster.
func baseConfList(path, clusterID string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b = manifests.ConfList
	case err != nil:
		return nil, fmt.Errorf("read conflist %s: %w", path, err)
	}
	if clusterID == "" {
		return b, nil
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("conflist %s: %w", path, err)
	}
	plugins, _ := doc["plugins"].([]any)
	for _, p := range plugins {
		pm, ok := p.(map[string]any)
		if !ok || pm["type"] != cni.PluginName {
			continue
		}
		sd, _ := pm["sdwan"].(map[string]any)
		if sd == nil {
			sd = map[string]any{}
			pm["sdwan"] = sd
		}
		if sd["cluster_id"] == clusterID {
			return b, nil
		}
		sd["cluster_id"] = clusterID
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// ensureConfList writes data at path unless a conflist is already there.
func ensureConfList(path string, data []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if _, err := nodenet.WriteFileAtomic(path, data, 0o644); err != nil {
		return fmt.Errorf("write conflist: %w", err)
	}
	return nil
}

// noRoutes is a nodenet datapath that programs no routes (LocalLink finds no device, so
// nodenet skips Apply) but keeps the masquerade.
type noRoutes struct{ nodenet.Datapath }

func (noRoutes) Apply(nodenet.Local, nodenet.Plan) error { return nil }

func (noRoutes) LocalLink(netip.Addr) (string, netip.Prefix, error) { return "", netip.Prefix{}, nil }

func (d noRoutes) Close() {} // the agent closes the wrapped datapath
