package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
)

// DefaultRotation is the default key rotation interval (ConfigMap `key-rotation`).
const DefaultRotation = 24 * time.Hour

// KeyStoreKey is the node database key holding the WireGuard private key and when it
// was made, so an agent restart keeps its key (a new key costs every peer a handshake).
const KeyStoreKey = "wireguard/key"

// Local API paths (served by the agent, mounted from Handlers).
const (
	PathKeysRotate = "/v1/keys/rotate"
	PathTunnels    = "/v1/tunnels"
)

// KV is the small store the key is persisted in (store.DB and mesh.KV satisfy it).
type KV = wg.KV

// LoadOrCreateKey returns the persisted private key (KeyStoreKey) and its creation time,
// generating and persisting one when there is none. kv may be nil (a fresh key every
// start).
func LoadOrCreateKey(ctx context.Context, kv KV, now time.Time) (wgtypes.Key, time.Time, error) {
	k, created, err := wg.LoadOrCreateKey(ctx, kv, KeyStoreKey, now)
	if err != nil {
		return wgtypes.Key{}, time.Time{}, fmt.Errorf("tunnel: %w", err)
	}
	return k, created, nil
}

// RotatorOptions configures a Rotator.
type RotatorOptions struct {
	Device wg.Device
	// Spec is the device's name, port and MTU (its PrivateKey is the current key).
	Spec wg.Spec
	// PathDevices share the key (per-path devices, PathDeviceSpecs): a rotation applies
	// the new key to each of them too, after Device.
	PathDevices []DeviceSpec
	CreatedAt   time.Time // when Spec.PrivateKey was made (LoadOrCreateKey)
	Store       KV
	// Announce signs and broadcasts an announcement (mesh.Node.Announce).
	Announce  func(announce.Announcement) error
	Endpoints []netip.AddrPort // this gateway's underlay endpoints
	PodCIDRs  []netip.Prefix   // the pod CIDRs reachable through this gateway
	Interval  time.Duration    // default DefaultRotation
	Logger    *slog.Logger
	Now       func() time.Time
}

// DeviceSpec is a device with the spec it was made with.
type DeviceSpec struct {
	Device wg.Device
	Spec   wg.Spec
}

// Rotator owns the gateway's WireGuard key.
type Rotator struct {
	o       RotatorOptions
	mu      sync.Mutex
	spec    wg.Spec
	created time.Time
}

// NewRotator makes a rotator for a device already created with o.Spec.
func NewRotator(o RotatorOptions) *Rotator {
	if o.Interval == 0 {
		o.Interval = DefaultRotation
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CreatedAt.IsZero() {
		o.CreatedAt = o.Now()
	}
	return &Rotator{o: o, spec: o.Spec, created: o.CreatedAt}
}

// PublicKey is the current public key.
func (r *Rotator) PublicKey() wgtypes.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.spec.PrivateKey.PublicKey()
}

// Announce (re)announces the current key; the agent calls it once at start (the mesh
// re-broadcasts it on every refresh afterwards).
func (r *Rotator) Announce() error {
	return r.o.Announce(Announcement(r.PublicKey(), r.o.Endpoints, r.o.PodCIDRs))
}

// RotateResult is the answer of POST /v1/keys/rotate.
type RotateResult struct {
	PublicKey         string    `json:"publicKey"`
	PreviousPublicKey string    `json:"previousPublicKey"`
	RotatedAt         time.Time `json:"rotatedAt"`
	// Warning is set when the key was applied but announcing it failed (the mesh's
	// periodic refresh re-broadcasts it).
	Warning string `json:"warning,omitempty"`
}

// Rotate makes a new key and switches to it in the order that keeps the outage short:
// persist it, apply it to the local device first, then announce the new public key
// signed through the mesh; each peer replaces the old key on receipt and the next
// packet in either direction starts a handshake with the new one. (Peers updating
// first would send handshakes this node cannot answer yet and wait for WireGuard's 5 s
// retry.)
func (r *Rotator) Rotate(ctx context.Context) (RotateResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return RotateResult{}, fmt.Errorf("tunnel: generate key: %w", err)
	}
	now := r.o.Now()
	if err := wg.SaveKey(ctx, r.o.Store, KeyStoreKey, k, now); err != nil {
		return RotateResult{}, err
	}
	spec := r.spec
	spec.PrivateKey = k
	if err := r.o.Device.Ensure(spec); err != nil {
		// Keep the stored key equal to the device's.
		if serr := wg.SaveKey(ctx, r.o.Store, KeyStoreKey, r.spec.PrivateKey, r.created); serr != nil {
			err = errors.Join(err, serr)
		}
		return RotateResult{}, fmt.Errorf("tunnel: apply new key: %w", err)
	}
	old := r.spec.PrivateKey.PublicKey()
	r.spec, r.created = spec, now
	res := RotateResult{PublicKey: k.PublicKey().String(), PreviousPublicKey: old.String(), RotatedAt: now.UTC()}
	var pathErrs []error
	for i := range r.o.PathDevices {
		d := &r.o.PathDevices[i]
		s := d.Spec
		s.PrivateKey = k
		if err := d.Device.Ensure(s); err != nil {
			// The main device has the new key already: announce it anyway (the other
			// paths' tunnels would otherwise break too); this path's device keeps the old
			// key until the next rotation or restart, so its tunnel is down meanwhile.
			pathErrs = append(pathErrs, fmt.Errorf("tunnel: new key on %s: %w", s.Name, err))
			continue
		}
		d.Spec = s
	}
	if err := r.o.Announce(Announcement(k.PublicKey(), r.o.Endpoints, r.o.PodCIDRs)); err != nil {
		// The device already uses the new key: the mesh refresh retries the broadcast.
		return res, errors.Join(append(pathErrs, fmt.Errorf("tunnel: announce new key: %w", err))...)
	}
	r.o.Logger.Info("wireguard key rotated", "public_key", res.PublicKey, "previous", res.PreviousPublicKey, "path_devices", len(r.o.PathDevices))
	return res, errors.Join(pathErrs...)
}

// Run rotates every Interval after the current key's creation (so restarts do not reset
// the clock) until ctx ends.
func (r *Rotator) Run(ctx context.Context) error {
	for {
		r.mu.Lock()
		due := r.created.Add(r.o.Interval)
		r.mu.Unlock()
		wait := max(due.Sub(r.o.Now()), 0)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if _, err := r.Rotate(ctx); err != nil {
			r.o.Logger.Warn("scheduled key rotation", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Minute):
			}
		}
	}
}

// ServeRotate is POST /v1/keys/rotate (`patronus keys rotate`).
func (r *Rotator) ServeRotate(w http.ResponseWriter, req *http.Request) {
	res, err := r.Rotate(req.Context())
	if err != nil && res.PublicKey == "" {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if err != nil {
		res.Warning = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// ServeTunnels is GET /v1/tunnels: the last reconcile's tunnels and conditions.
func (r *Reconciler) ServeTunnels(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(r.Status())
}
