package nodenet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/wg"
)

// Node key rotation (docs/CONTRACT.md, `patronus keys rotate --node`): the node device's
// private key is replaced on demand, in the order that keeps the traffic gap short (see
// rotateWG); the reconcile goroutine does it, so the key, the device and the published
// key never race a reconcile.

// RotatePath is where RotateHandler is meant to be mounted on the local API (the agent's
// socket, and `patronus mesh run --pod-network`'s).
const RotatePath = "/v1/nodenet/keys/rotate"

// ErrNotEncrypting is returned (wrapped) by RotateKey when node encryption is off or its
// device is not up: there is no key to rotate.
var ErrNotEncrypting = errors.New("node-to-node encryption is not running")

// RotateResult is the answer of RotateKey and POST RotatePath: the same fields as the
// inter-cluster tunnel's rotation answer (POST /v1/keys/rotate).
type RotateResult struct {
	PublicKey         string    `json:"publicKey"`
	PreviousPublicKey string    `json:"previousPublicKey"`
	RotatedAt         time.Time `json:"rotatedAt"`
	// Warning is set when the new key is in use but publishing it (or the reconcile
	// right after) failed: the periodic resync retries, peers meanwhile cannot reach
	// this node over WireGuard.
	Warning string `json:"warning,omitempty"`
}

type rotateReq struct {
	ctx   context.Context
	reply chan rotateReply
}

type rotateReply struct {
	res RotateResult
	err error
}

// RotateKey asks the running controller (Run) to rotate the node's WireGuard key now and
// waits for the outcome. An error with a non-empty PublicKey means the key was rotated
// but not (yet) published everywhere.
func (c *Controller) RotateKey(ctx context.Context) (RotateResult, error) {
	req := rotateReq{ctx: ctx, reply: make(chan rotateReply, 1)}
	select {
	case c.rotate <- req:
	case <-ctx.Done():
		return RotateResult{}, fmt.Errorf("nodenet: rotate key: %w", ctx.Err())
	}
	select {
	case r := <-req.reply:
		return r.res, r.err
	case <-ctx.Done():
		// The controller may still finish it: the result is then only in its log.
		return RotateResult{}, fmt.Errorf("nodenet: rotate key: %w", ctx.Err())
	}
}

// rotateWG switches the node device to a new private key (reconcile goroutine only). The
// caller then reconciles, which publishes the new public key (Node annotation; edge mode:
// the podblock announcement) and reprograms the peers.
//
// Order, and why. A WireGuard peer is identified by its public key, so every peer must
// swap its peer entry for this node (wg.Diff adds the new key, taking over the allowed
// IPs, and removes the old one in the same device update). Changing the private key
// expires this device's sessions (kernel and wireguard-go alike: the current keypairs can
// no longer send; received packets on them still decrypt until they age out). So:
//
//  1. save the new key in the node database first: a crash after step 2 restarts with
//     the key the device had, never with one no peer will learn;
//  2. apply it to the device: from here this node's packets wait for a handshake that the
//     peers can answer only once they know the new key; their packets to this node still
//     arrive on the old sessions until they swap;
//  3. wait publishSettle, then publish it (the caller's reconcile): each peer swaps on
//     receipt and, seeing a replaced key (configureWG), starts the handshake at once
//     instead of waiting for this node's retry, which WireGuard sends only 5 s after the
//     unanswered one.
//
// The wait is there for that first, unanswered handshake: this node sends it with its
// next packet to a peer, within milliseconds of step 2. Published at once, the peer
// sometimes swapped before it had processed that handshake, accepted it and answered,
// while its own handshake (the kick, or its traffic) crossed it: WireGuard keeps one
// handshake per peer, so each side answered the other's, dropped the answer to its own,
// and neither could send until the 5 s retry (measured: 2 of 16 rotations stalled
// 5.03 s). Published publishSettle later, the first handshake has long been dropped as
// coming from an unknown key, and only the peer's handshake is under way.
//
// Publishing first would be worse: peers would swap to a key this device does not have
// yet, their handshakes would be dropped (and retried only after 5 s) and their old
// sessions, removed with the old peer, would be gone too.
func (c *Controller) rotateWG(ctx context.Context) (RotateResult, error) {
	if c.o.Encrypt.Mode != EncryptionWireGuard {
		return RotateResult{}, fmt.Errorf("nodenet: %w (node-encryption is %s)", ErrNotEncrypting, c.o.Encrypt.Mode)
	}
	if !c.wgUp || c.wgLink == nil || !c.wgSpecSet {
		return RotateResult{}, fmt.Errorf("nodenet: %w (device %s not up yet)", ErrNotEncrypting, WGDevice)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return RotateResult{}, fmt.Errorf("nodenet: generate key: %w", err)
	}
	now := c.o.Now()
	kv := dbKV(c.o.DB)
	var prev string
	var hadPrev bool
	if kv != nil {
		if prev, hadPrev, err = kv.Get(ctx, KVWGKey); err != nil {
			return RotateResult{}, fmt.Errorf("nodenet: read %s: %w", KVWGKey, err)
		}
	}
	if err := wg.SaveKey(ctx, kv, KVWGKey, k, now); err != nil {
		return RotateResult{}, fmt.Errorf("nodenet: %w", err)
	}
	spec := c.wgSpec
	spec.PrivateKey = k
	mtu, err := c.wgLink.Ensure(spec)
	if err != nil {
		// The device keeps the old key (or is broken: the next reconcile says so); the
		// database must keep the key the device had.
		if hadPrev {
			if serr := kv.Set(ctx, KVWGKey, prev); serr != nil {
				err = errors.Join(err, fmt.Errorf("restore %s: %w", KVWGKey, serr))
			}
		}
		return RotateResult{}, fmt.Errorf("nodenet: apply the new key to %s: %w", WGDevice, err)
	}
	old := c.wgKey.PublicKey()
	c.wgKey, c.wgSpec, c.wgCreated = k, spec, now
	c.mu.Lock()
	if c.status.WireGuard != nil {
		c.status.WireGuard.PublicKey, c.status.WireGuard.MTU = k.PublicKey().String(), mtu
	}
	c.mu.Unlock()
	res := RotateResult{PublicKey: k.PublicKey().String(), PreviousPublicKey: old.String(), RotatedAt: now.UTC()}
	c.log.Info("node-to-node WireGuard key rotated: applied, publishing", "publicKey", res.PublicKey, "previous", res.PreviousPublicKey)
	return res, nil
}

// publishSettle is how long a rotation waits between applying the new key and
// publishing it (see rotateWG): it adds to the stall of every rotation, and keeps a
// crossed handshake (a 5 s stall) away unless a node is this late processing a packet.
const publishSettle = 200 * time.Millisecond

// settle waits publishSettle (less if ctx ends).
func settle(ctx context.Context) {
	t := time.NewTimer(publishSettle)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// MinKeyRotation is the shortest Encrypt.KeyRotation: every rotation costs each peer a
// handshake and the traffic a short stall.
const MinKeyRotation = time.Minute

// keyCreated is when k was made, as the node database says (now when it does not hold k:
// a key given in Encrypt.Key, or no database).
func (c *Controller) keyCreated(k wgtypes.Key) time.Time {
	stored, created, ok, err := wg.LoadKey(context.Background(), dbKV(c.o.DB), KVWGKey)
	if err == nil && ok && stored == k && !created.IsZero() {
		return created
	}
	return c.o.Now()
}

// rotateIfDue rotates the key when Encrypt.KeyRotation is on and the key is that old
// (reconcile goroutine, after a reconcile; reconcile publishes the new key). A failure is
// logged and retried a minute later.
func (c *Controller) rotateIfDue(ctx context.Context, reconcile func() error) {
	every := c.o.Encrypt.KeyRotation
	if every <= 0 || !c.wgUp || c.wgCreated.IsZero() {
		return
	}
	now := c.o.Now()
	if now.Before(c.wgCreated.Add(every)) || now.Before(c.rotateRetry) {
		return
	}
	res, err := c.rotateWG(ctx)
	if err == nil {
		settle(ctx)
		if rerr := reconcile(); rerr != nil {
			c.log.Warn("scheduled node key rotation: key in use, reconcile after it failed (the resync retries)", "publicKey", res.PublicKey, "err", rerr)
		}
		c.log.Info("scheduled node key rotation done", "every", every, "publicKey", res.PublicKey, "previous", res.PreviousPublicKey)
		return
	}
	c.rotateRetry = now.Add(time.Minute)
	c.log.Warn("scheduled node key rotation failed: retrying in a minute", "err", err)
}

// serveRotate answers one rotation request: rotate, then reconcile (publish and
// reprogram) with reconcile; a reconcile error after a successful rotation is a warning.
func (c *Controller) serveRotate(req rotateReq, reconcile func() error) {
	res, err := c.rotateWG(req.ctx)
	if err == nil {
		settle(context.Background()) // the key is in use: publish it even if the caller left
		if rerr := reconcile(); rerr != nil {
			err = fmt.Errorf("nodenet: key rotated, but publishing or reprogramming failed (the resync retries): %w", rerr)
		}
	}
	req.reply <- rotateReply{res: res, err: err}
}

// RotateHandler serves POST RotatePath (`patronus keys rotate --node`): 200 with
// RotateResult (Warning set when the key is in use but not published yet), 409 when node
// encryption is not running, 500 when the rotation failed (the old key stays).
func (c *Controller) RotateHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		res, err := c.RotateKey(ctx)
		switch {
		case err != nil && res.PublicKey != "":
			res.Warning = err.Error()
		case errors.Is(err, ErrNotEncrypting):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
}
