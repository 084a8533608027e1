package nodenet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/nlhandle"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/store"
)

// Node-to-node encryption (docs/CONTRACT.md): one WireGuard device per node, WGDevice,
// listening on WGPort, its key in the node database (KVWGKey) and its public key
// published on the Node (AnnotationWGKey) or, in edge mode, in the node's signed podblock
// announcement. Peers are the other nodes that published a key; their blocks are routed
// over the device, the others keep the plain route.
const (
	// EncryptionNone and EncryptionWireGuard are the modes (config.ParseNodeEncryption).
	EncryptionNone      = config.NodeEncryptionNone
	EncryptionWireGuard = config.NodeEncryptionWireGuard

	// WGDevice is the node-to-node WireGuard interface (not "wg-…": that prefix is the
	// inter-cluster tunnel's).
	WGDevice = "ptw0"
	// WGPort is its UDP listen port: below the inter-cluster tunnel's 51820, whose
	// per-path devices count up from it (51820+k).
	WGPort = 51819
	// AnnotationWGKey is the Node annotation carrying the node's WireGuard public key.
	AnnotationWGKey = "patronus.io/node-wireguard-key"
	// KVWGKey is the node database kv key of the private key (JSON {privateKey, createdAt}).
	KVWGKey = "nodenet/wireguard-key"
)

// GatewayLabel marks gateway nodes (label or annotation "true"; docs/CONTRACT.md).
const GatewayLabel = "patronus.io/gateway"

func isGateway(n *corev1.Node) bool {
	return n.Labels[GatewayLabel] == "true" || n.Annotations[GatewayLabel] == "true"
}

// encryptionMode is an Encrypt.Mode parsed: "" is EncryptionNone (the zero Encrypt),
// anything else as config.ParseNodeEncryption says.
func encryptionMode(v string) (string, error) {
	if strings.TrimSpace(v) == "" {
		return EncryptionNone, nil
	}
	return config.ParseNodeEncryption(v)
}

// LoadOrCreateWGKey returns the node's WireGuard private key from kv (KVWGKey), making and
// saving one when there is none: a restart keeps the key, so peers keep their sessions.
// kv nil: a new key each call.
func LoadOrCreateWGKey(ctx context.Context, kv KV, now time.Time) (wgtypes.Key, error) {
	k, _, err := wg.LoadOrCreateKey(ctx, kv, KVWGKey, now)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("nodenet: %w", err)
	}
	return k, nil
}

// dbKV is db as a KV: nil (no database) stays a nil interface, not a nil *store.DB.
func dbKV(db *store.DB) KV {
	if db == nil {
		return nil
	}
	return db
}

// ParseWGKey reads a published public key (base64); "" or garbage is the zero key.
func ParseWGKey(s string) wgtypes.Key {
	k, err := wgtypes.ParseKey(strings.TrimSpace(s))
	if err != nil {
		return wgtypes.Key{}
	}
	return k
}

// WGSpec is the node device as WGLink.Ensure makes it.
type WGSpec struct {
	PrivateKey wgtypes.Key
	Port       int
	// Underlay is the underlay interface: the device's MTU is its MTU − wg.Overhead.
	Underlay string
	// Addr is the device's address (/32): the node block's network address, so traffic
	// the node itself sends to peer pods has a source inside its block (the peers' allowed
	// IPs for it) and their answers come back through the device.
	Addr netip.Addr
}

// WGLink is the node's WireGuard device as the controller drives it (tests fake it).
type WGLink interface {
	// Ensure creates the device when missing and makes key, port, MTU and address as
	// spec says (only what differs changes). It returns the MTU set.
	Ensure(spec WGSpec) (mtu int, err error)
	// Configure makes the peers exactly these (wg.Device.Configure: only changed peers).
	Configure(peers []wg.Peer) (wg.Changes, error)
	// State is the device's current state (nil, nil when it does not exist).
	State() (*wgtypes.Device, error)
	// Remove deletes the device (encryption turned off), also one an earlier run left.
	Remove() error
	// Implementation is "kernel" or "userspace" ("" while no device).
	Implementation() string
	Close()
}

// netlinkWG is the real WGLink: dataplane/wg (kernel WireGuard where the kernel has it,
// else wireguard-go in this process) in the namespace at nsPath. The controller drives
// it from one goroutine; State is also called by Status readers, hence the lock.
type netlinkWG struct {
	nsPath string
	mode   wg.Mode
	log    *slog.Logger

	mu  sync.Mutex
	dev wg.Device
}

// NewWGLink returns the real WGLink for the namespace at nsPath ("" = the caller's).
func NewWGLink(nsPath string, mode wg.Mode, log *slog.Logger) WGLink {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &netlinkWG{nsPath: nsPath, mode: mode, log: log}
}

func (w *netlinkWG) Ensure(s WGSpec) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h, err := nlhandle.Open(w.nsPath)
	if err != nil {
		return 0, fmt.Errorf("nodenet: %w", err)
	}
	defer h.Close()
	mtu := wg.DefaultMTU
	if u, err := h.LinkByName(s.Underlay); err == nil && u.Attrs().MTU > wg.Overhead {
		mtu = u.Attrs().MTU - wg.Overhead
	}
	spec := wg.Spec{Name: WGDevice, ListenPort: s.Port, PrivateKey: s.PrivateKey, MTU: mtu}
	if w.dev == nil {
		d, err := wg.Open(wg.Options{NetNS: w.nsPath, Mode: w.mode, Logger: w.log}, spec)
		if err != nil {
			return 0, fmt.Errorf("nodenet: WireGuard device %s: %w", WGDevice, err)
		}
		w.dev = d
		w.log.Info("node-to-node WireGuard device up", "device", WGDevice, "port", s.Port, "mtu", mtu,
			"publicKey", s.PrivateKey.PublicKey().String(), "implementation", implementation(d))
	} else if err := w.dev.Ensure(spec); err != nil {
		return 0, err
	}
	l, err := h.LinkByName(WGDevice)
	if err != nil {
		return 0, fmt.Errorf("nodenet: %s: %w", WGDevice, err)
	}
	if !s.Addr.IsValid() {
		return mtu, nil
	}
	addrs, err := retry(func() ([]netlink.Addr, error) { return h.AddrList(l, unix.AF_INET) })
	if err != nil {
		return 0, fmt.Errorf("nodenet: addresses of %s: %w", WGDevice, err)
	}
	have := false
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() == s.Addr {
			have = true
		} else if err := h.AddrDel(l, &a); err != nil {
			return 0, fmt.Errorf("nodenet: remove %s from %s: %w", a.IPNet, WGDevice, err)
		}
	}
	if !have {
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: s.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return 0, fmt.Errorf("nodenet: address %s on %s: %w", s.Addr, WGDevice, err)
		}
	}
	return mtu, nil
}

func (w *netlinkWG) Configure(peers []wg.Peer) (wg.Changes, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dev == nil {
		return wg.Changes{}, errors.New("nodenet: WireGuard device not open")
	}
	return w.dev.Configure(peers)
}

func (w *netlinkWG) State() (*wgtypes.Device, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dev == nil {
		return nil, nil
	}
	return w.dev.State()
}

func (w *netlinkWG) Implementation() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return implementation(w.dev)
}

func implementation(d wg.Device) string {
	if d == nil {
		return ""
	}
	if s, err := d.State(); err == nil && s.Type == wgtypes.Userspace {
		return "userspace"
	}
	return "kernel"
}

func (w *netlinkWG) Remove() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dev != nil {
		w.dev.Close()
		w.dev = nil
	}
	h, err := nlhandle.Open(w.nsPath)
	if err != nil {
		return fmt.Errorf("nodenet: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(WGDevice)
	if err != nil {
		return nil // gone already (a userspace device goes with its Close)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("nodenet: delete %s: %w", WGDevice, err)
	}
	w.log.Info("node-to-node WireGuard device removed", "device", WGDevice)
	return nil
}

func (w *netlinkWG) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dev != nil {
		w.dev.Close()
		w.dev = nil
	}
}

// Encrypt configures node-to-node encryption (Options.Encrypt, EdgeOptions.Encrypt).
type Encrypt struct {
	// Mode is EncryptionNone ("" too) or EncryptionWireGuard: the node's WireGuard device
	// WGDevice, its public key published (Node annotation AnnotationWGKey; edge mode: the
	// signed podblock announcement), and the blocks of every peer that published one
	// routed over it. Off, a device an earlier run left is removed.
	Mode string
	// Port is the devices' UDP port, the same on every node (default WGPort).
	Port int
	// WGMode picks the WireGuard implementation (default: kernel if present, else
	// userspace in this process).
	WGMode wg.Mode
	// Key is the device's private key (zero: the node database's KVWGKey, made once).
	Key wgtypes.Key
	// Link overrides the real device (tests).
	Link WGLink
	// KeyRotation (ConfigMap node-encryption-key-rotation; 0: off, the default) rotates
	// the key (as RotateKey does) once it is that old: its age counts from its creation
	// time in the node database, so restarts do not reset the clock.
	KeyRotation time.Duration
	// Strict (ConfigMap node-encryption-strict; needs Mode wireguard): pod traffic to
	// another node's pod block that would leave by any interface but WGDevice is dropped
	// and counted, never sent in the clear (strict.go).
	Strict bool
}

// check validates e and fills its defaults.
func (e *Encrypt) check() error {
	m, err := encryptionMode(e.Mode)
	if err != nil {
		return fmt.Errorf("nodenet: node-encryption %w", err)
	}
	e.Mode = m
	if e.Strict && e.Mode != EncryptionWireGuard {
		return fmt.Errorf("nodenet: strict node encryption needs node-encryption %s (it is %s)", EncryptionWireGuard, e.Mode)
	}
	if e.Port == 0 {
		e.Port = WGPort
	}
	if e.KeyRotation < 0 || e.KeyRotation > 0 && e.KeyRotation < MinKeyRotation {
		return fmt.Errorf("nodenet: node key rotation every %s: want 0 (off) or at least %s", e.KeyRotation, MinKeyRotation)
	}
	if e.Port < 1 || e.Port > 65535 {
		return fmt.Errorf("nodenet: node WireGuard port %d: want 1..65535", e.Port)
	}
	if e.Port >= wg.DefaultPort && e.Port <= wg.DefaultPort+255 || e.Port == VXLANPort {
		return fmt.Errorf("nodenet: node WireGuard port %d is taken (inter-cluster tunnel %d and its per-path devices up to %d, VXLAN %d)",
			e.Port, wg.DefaultPort, wg.DefaultPort+255, VXLANPort)
	}
	switch e.WGMode {
	case wg.ModeAuto, wg.ModeKernel, wg.ModeUserspace:
	default:
		return fmt.Errorf("nodenet: WireGuard mode %q: want kernel, userspace or empty (auto)", e.WGMode)
	}
	return nil
}

// ensureWG brings the node device up for local (key from the database on first use).
// On failure wgUp stays false: every peer keeps its plain route (PlainNoDevice).
func (c *Controller) ensureWG(local Local) (err error) {
	defer func() {
		c.mu.Lock()
		if c.status.WireGuard == nil {
			c.status.WireGuard = &WGStatus{Device: WGDevice, Port: c.o.Encrypt.Port}
		}
		c.status.WireGuard.Error = ""
		if err != nil {
			c.status.WireGuard.Error = err.Error()
		}
		c.mu.Unlock()
	}()
	c.wgUp = false
	if c.wgKey == (wgtypes.Key{}) {
		k := c.o.Encrypt.Key
		if k == (wgtypes.Key{}) {
			if k, err = LoadOrCreateWGKey(context.Background(), dbKV(c.o.DB), c.o.Now()); err != nil {
				return err
			}
		}
		c.wgKey, c.wgCreated = k, c.keyCreated(k)
	}
	if c.wgLink == nil {
		c.wgLink = c.o.Encrypt.Link
		if c.wgLink == nil && c.o.Datapath != nil {
			// A substitute datapath (tests) with a real device would be the caller's
			// namespace's: never make one there behind its back.
			return errors.New("nodenet: Options.Datapath is set but Encrypt.Link is not: no WireGuard device")
		}
		if c.wgLink == nil {
			c.wgLink = NewWGLink(c.o.NetNSPath, c.o.Encrypt.WGMode, c.log)
		}
	}
	spec := WGSpec{PrivateKey: c.wgKey, Port: c.o.Encrypt.Port, Underlay: local.Dev}
	if local.Block.IsValid() {
		spec.Addr = VTEPAddr(local.Block)
	}
	mtu, err := c.wgLink.Ensure(spec)
	if err != nil {
		return err
	}
	c.wgUp, c.wgRemoved = true, false
	c.wgSpec, c.wgSpecSet = spec, true
	c.mu.Lock()
	c.wgLive = c.wgLink
	c.status.WireGuard = &WGStatus{Device: WGDevice, PublicKey: c.wgKey.PublicKey().String(), Port: c.o.Encrypt.Port, MTU: mtu,
		Implementation: c.wgLink.Implementation()}
	c.mu.Unlock()
	return nil
}

// rotatedKick is the persistent keepalive a peer whose key was replaced gets for one
// device update (configureWG): any value works, only the 0 → non-zero change matters.
const rotatedKick = 25 * time.Second

// configureWG makes the device's peers the plan's (only changed peers are touched).
//
// A peer node whose key changed since the last configure (it rotated: rotate.go) gets its
// new key in place of the old one with a persistent keepalive for that one update, then
// the keepalive back off: turning a peer's keepalive on makes WireGuard (kernel and
// wireguard-go) send a keepalive at once, which without a session starts a handshake
// with the new key now. The rotating node sent its own handshake when it switched keys;
// that one was dropped here (unknown key) and WireGuard retries it only after 5 s, so
// without this, traffic that only the rotating node starts would stall for that long.
func (c *Controller) configureWG(p Plan) error {
	peers := make([]wg.Peer, 0, len(p.WGPeers))
	keys := make(map[string]wgtypes.Key, len(p.WGPeers))
	var rotated []string
	kicked := slices.Clone(p.WGPeers)
	for i, w := range p.WGPeers {
		peers = append(peers, w.Peer)
		keys[w.Node] = w.PublicKey
		if old, ok := c.wgPeerKeys[w.Node]; ok && old != w.PublicKey && w.Peer.Keepalive == 0 {
			kicked[i].Peer.Keepalive = rotatedKick
			rotated = append(rotated, w.Node)
		}
	}
	if len(rotated) > 0 {
		kp := make([]wg.Peer, 0, len(kicked))
		for _, w := range kicked {
			kp = append(kp, w.Peer)
		}
		if _, err := c.wgLink.Configure(kp); err != nil {
			return fmt.Errorf("nodenet: WireGuard peers: %w", err)
		}
		c.log.Info("node-to-node WireGuard peers rotated their key: swapped and handshaking", "nodes", rotated)
	}
	ch, err := c.wgLink.Configure(peers)
	if err != nil {
		return fmt.Errorf("nodenet: WireGuard peers: %w", err)
	}
	c.wgPeerKeys = keys
	if !ch.Empty() {
		c.log.Info("node-to-node WireGuard peers changed", "added", len(ch.Added), "updated", len(ch.Updated), "removed", len(ch.Removed), "peers", len(peers))
	}
	return nil
}

// removeWG deletes the device (encryption off): the plain routes are in place already.
func (c *Controller) removeWG() error {
	l := c.wgLink
	if l == nil {
		l = c.o.Encrypt.Link
	}
	if l == nil && c.o.Datapath != nil {
		c.wgRemoved = true // a substitute datapath (tests): no real device to look for
		return nil
	}
	if l == nil {
		l = NewWGLink(c.o.NetNSPath, c.o.Encrypt.WGMode, c.log)
	}
	if err := l.Remove(); err != nil {
		return err
	}
	c.wgLink, c.wgUp, c.wgRemoved = nil, false, true
	c.mu.Lock()
	c.wgLive, c.status.WireGuard, c.status.PeerStates = nil, nil, nil
	c.mu.Unlock()
	return nil
}

// closeWG releases the device when the controller stops: a userspace device (and its
// routes) goes with this process, a kernel one stays for the next run.
func (c *Controller) closeWG() {
	c.mu.Lock()
	c.wgLive = nil
	c.mu.Unlock()
	if c.wgLink != nil {
		c.wgLink.Close()
		c.wgLink, c.wgUp = nil, false
	}
}

// recordPeers puts the per-peer encryption state in the status and logs the peers
// routed in the clear whenever that set changes (mixed rollout must be visible).
func (c *Controller) recordPeers(enc bool, peers []Peer, p Plan) {
	strict := c.strictOn()
	if !enc {
		return
	}
	wgBy := map[string]WGPeer{}
	for _, w := range p.WGPeers {
		wgBy[w.Node] = w
	}
	plainBy := map[string]string{}
	for _, pl := range p.Plain {
		plainBy[pl.Node] = pl.Reason
	}
	routed := map[string][]netip.Prefix{}
	for _, r := range p.Routes {
		for _, peer := range peers {
			if slices.Contains(peer.Blocks, r.Dst) {
				routed[peer.Name] = append(routed[peer.Name], r.Dst)
			}
		}
	}
	var states []PeerState
	var plain []string
	for _, peer := range peers {
		st := PeerState{Node: peer.Name, Blocks: routed[peer.Name]}
		if w, ok := wgBy[peer.Name]; ok {
			st.Encrypted, st.PublicKey, st.Endpoint = true, w.PublicKey.String(), w.Endpoint.String()
		} else if len(st.Blocks) == 0 {
			continue // not routed at all (conflict, no address)
		} else {
			st.Reason = plainBy[peer.Name]
			if st.Reason == "" {
				st.Reason = PlainNoDevice
			}
			if strict {
				st.Dropped = strictReason(st.Reason)
			}
			plain = append(plain, peer.Name+": "+st.Reason)
		}
		states = append(states, st)
	}
	slices.SortFunc(states, func(a, b PeerState) int { return strings.Compare(a.Node, b.Node) })
	slices.Sort(plain)
	c.mu.Lock()
	c.status.PeerStates = states
	c.mu.Unlock()
	if key := strings.Join(plain, "; "); key != c.wgPlain {
		c.wgPlain = key
		switch {
		case key != "" && strict:
			c.log.Warn("pod traffic to some peers DROPPED: not encrypted and node encryption is strict", "peers", plain)
		case key != "":
			c.log.Warn("node-to-node traffic NOT encrypted to some peers", "peers", plain)
		default:
			c.log.Info("node-to-node traffic encrypted to every peer", "peers", len(states))
		}
	}
}

// fillHandshakes copies the device's handshake times and counters into states.
func fillHandshakes(states []PeerState, d *wgtypes.Device) {
	by := map[string]wgtypes.Peer{}
	for _, p := range d.Peers {
		by[p.PublicKey.String()] = p
	}
	for i := range states {
		if p, ok := by[states[i].PublicKey]; ok && states[i].Encrypted {
			states[i].LastHandshake, states[i].RxBytes, states[i].TxBytes = p.LastHandshakeTime, p.ReceiveBytes, p.TransmitBytes
		}
	}
}

// publishKey makes the Node's AnnotationWGKey the device's public key while encryption
// is on and the device is up, and removes it otherwise (peers then stop encrypting to
// this node). API mode only (edge mode announces the key with the block claim).
func (c *Controller) publishKey(ctx context.Context, self *corev1.Node) error {
	if c.o.Client == nil || self == nil {
		return nil
	}
	want := ""
	if c.o.Encrypt.Mode == EncryptionWireGuard && c.wgUp {
		want = c.wgKey.PublicKey().String()
	}
	if self.Annotations[AnnotationWGKey] == want {
		return nil
	}
	val := "null"
	if want != "" {
		val = `"` + want + `"`
	}
	patch := []byte(`{"metadata":{"annotations":{"` + AnnotationWGKey + `":` + val + `}}}`)
	if _, err := c.o.Client.Nodes().Patch(ctx, self.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("nodenet: publish the WireGuard key on Node %s: %w", self.Name, err)
	}
	if want != "" {
		c.log.Info("published the node's WireGuard public key", "annotation", AnnotationWGKey, "publicKey", want)
	} else {
		c.log.Info("withdrew the node's WireGuard public key", "annotation", AnnotationWGKey)
	}
	return nil
}
