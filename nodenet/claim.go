package nodenet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/nodenet/alloc"
)

// Names on the block Leases (docs/CONTRACT.md).
const (
	// LabelComponent marks every block Lease (list with LeaseSelector).
	LabelComponent = "app.kubernetes.io/component"
	// ComponentPodBlock is LabelComponent's value on block Leases.
	ComponentPodBlock = "pod-block"
	// LeaseSelector selects the block Leases.
	LeaseSelector = LabelComponent + "=" + ComponentPodBlock
	// AnnotationBlock carries the block's CIDR on its Lease (the name is the index, the
	// annotation the value: IPv6 names cannot be parsed back).
	AnnotationBlock = "patronus.io/pod-block"
	// KVBlock is the node database key holding the node's claimed block.
	KVBlock = "nodenet/block"
)

// KV is the node database's key/value table (store.DB).
type KV interface {
	Get(ctx context.Context, key string) (string, bool, error)
	Set(ctx context.Context, key, value string) error
}

// savedBlock is the JSON value at KVBlock.
type savedBlock struct {
	Block     netip.Prefix `json:"block"`
	Source    string       `json:"source"` // "lease" | "node"
	ClaimedAt time.Time    `json:"claimedAt"`
}

// Sources of a node's block.
const (
	SourceNode  = "node"  // Node spec.podCIDR(s)
	SourceLease = "lease" // a block Lease this node holds
)

// claimer claims a block through Leases: creating a Lease is the claim, the API server's
// create is the compare-and-swap (AlreadyExists: someone else holds it), so two nodes
// never hold one block.
type claimer struct {
	client  kclient.Kube
	ns      string
	node    string
	nodeUID types.UID
	cluster netip.Prefix
	bits    int
	kv      KV
	log     *slog.Logger
	now     func() time.Time
}

// errLost wraps the block this node used to hold, now held by another node.
type errLost struct{ block netip.Prefix }

func (e errLost) Error() string { return fmt.Sprintf("block %s is held by another node", e.block) }

func (c *claimer) load(ctx context.Context) (savedBlock, bool) {
	if c.kv == nil {
		return savedBlock{}, false
	}
	v, ok, err := c.kv.Get(ctx, KVBlock)
	if err != nil || !ok {
		return savedBlock{}, false
	}
	var s savedBlock
	if json.Unmarshal([]byte(v), &s) != nil || !s.Block.IsValid() {
		return savedBlock{}, false
	}
	return s, true
}

func (c *claimer) save(ctx context.Context, s savedBlock) error {
	if c.kv == nil {
		return nil
	}
	b, _ := json.Marshal(s)
	return c.kv.Set(ctx, KVBlock, string(b))
}

func (c *claimer) lease(block netip.Prefix) *coordinationv1.Lease {
	holder := c.node
	now := metav1.NewMicroTime(c.now())
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:      alloc.LeaseName(block),
			Namespace: c.ns,
			Labels: map[string]string{
				"app": "patronus", "app.kubernetes.io/name": "patronus", LabelComponent: ComponentPodBlock,
			},
			Annotations: map[string]string{AnnotationBlock: block.Masked().String()},
		},
		// No duration: a block is not renewed; it is released when its Node is deleted
		// (by the agents watching Nodes, and by the garbage collector via the owner).
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &now},
	}
	if c.nodeUID != "" {
		l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: c.node, UID: c.nodeUID}}
	}
	return l
}

// create claims block. ok is false when another node holds it.
func (c *claimer) create(ctx context.Context, block netip.Prefix) (bool, error) {
	_, err := c.client.Leases(c.ns).Create(ctx, c.lease(block), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nodenet: claim %s: %w", block, err)
	}
	return true, nil
}

// holderOf returns the holder of block's Lease ("" when there is none).
func (c *claimer) holderOf(ctx context.Context, block netip.Prefix) (string, error) {
	l, err := c.client.Leases(c.ns).Get(ctx, alloc.LeaseName(block), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("nodenet: read lease of %s: %w", block, err)
	}
	if l.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *l.Spec.HolderIdentity, nil
}

// Acquire returns this node's block: the saved one when its Lease is still ours (or can
// be re-created), else a Lease the node already holds, else a new claim. When the saved
// block is now held by another node, lost is that block (its pods' addresses are stale).
func (c *claimer) Acquire(ctx context.Context) (block netip.Prefix, lost netip.Prefix, err error) {
	if err := alloc.Validate(c.cluster, c.bits); err != nil {
		return block, lost, err
	}
	if s, ok := c.load(ctx); ok && s.Source == SourceLease {
		if s.Block.Bits() == c.bits && c.cluster.Contains(s.Block.Addr()) {
			holder, err := c.holderOf(ctx, s.Block)
			if err != nil {
				return block, lost, err
			}
			switch holder {
			case c.node:
				return s.Block, lost, nil
			case "":
				// Released while we were away (our Node was deleted and re-created):
				// claim it again, so the node's pods keep their addresses.
				ok, err := c.create(ctx, s.Block)
				if err != nil {
					return block, lost, err
				}
				if ok {
					c.log.Info("re-claimed saved pod block", "block", s.Block)
					return s.Block, lost, nil
				}
				lost = s.Block
			default:
				lost = s.Block
			}
		} else {
			lost = s.Block // cluster CIDR or block size changed
		}
		if lost.IsValid() {
			c.log.Warn("saved pod block is no longer ours", "block", lost)
		}
	}
	leases, err := c.client.Leases(c.ns).List(ctx, metav1.ListOptions{LabelSelector: LeaseSelector})
	if err != nil {
		return block, lost, fmt.Errorf("nodenet: list block leases: %w", err)
	}
	taken := map[netip.Prefix]bool{}
	for _, l := range leases.Items {
		b, ok := leaseBlock(&l)
		if !ok {
			continue
		}
		taken[b] = true
		if h := l.Spec.HolderIdentity; h != nil && *h == c.node && b != lost && b.Bits() == c.bits && c.cluster.Contains(b.Addr()) {
			// Claimed before the database lost it (a fresh database on the same node).
			if err := c.save(ctx, savedBlock{Block: b, Source: SourceLease, ClaimedAt: c.now()}); err != nil {
				return block, lost, err
			}
			return b, lost, nil
		}
	}
	if lost.IsValid() {
		taken[lost] = true
	}
	for _, cand := range alloc.Candidates(c.cluster, c.bits, c.node, taken, 0) {
		ok, err := c.create(ctx, cand)
		if err != nil {
			return block, lost, err
		}
		if !ok {
			continue // claimed by another node since the list
		}
		if err := c.save(ctx, savedBlock{Block: cand, Source: SourceLease, ClaimedAt: c.now()}); err != nil {
			return block, lost, err
		}
		c.log.Info("claimed pod block", "block", cand, "lease", alloc.LeaseName(cand))
		return cand, lost, nil
	}
	return block, lost, fmt.Errorf("nodenet: no free /%d block left in %s", c.bits, c.cluster)
}

// leaseBlock is the block a Lease claims (annotation, else its name).
func leaseBlock(l *coordinationv1.Lease) (netip.Prefix, bool) {
	if v, ok := l.Annotations[AnnotationBlock]; ok {
		p, err := netip.ParsePrefix(v)
		return p.Masked(), err == nil
	}
	return alloc.ParseLeaseName(l.Name)
}

// ReleaseNode deletes the block Leases held by node (a Node deleted for good). Each Lease
// is deleted with a precondition on its UID, so a Lease re-created meanwhile stays.
func ReleaseNode(ctx context.Context, client kclient.Kube, namespace, node string) ([]netip.Prefix, error) {
	leases, err := client.Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: LeaseSelector})
	if err != nil {
		return nil, fmt.Errorf("nodenet: list block leases: %w", err)
	}
	var released []netip.Prefix
	var errs []error
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != node {
			continue
		}
		uid := l.UID
		err := client.Leases(namespace).Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("nodenet: release %s: %w", l.Name, err))
			continue
		}
		if b, ok := leaseBlock(&l); ok && err == nil {
			released = append(released, b)
		}
	}
	return released, errors.Join(errs...)
}

// nodeBlock returns the Node's IPv4 pod CIDR from spec.podCIDRs (else spec.podCIDR).
func nodeBlock(n *corev1.Node) (netip.Prefix, bool) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			return p.Masked(), true
		}
	}
	return netip.Prefix{}, false
}

// nodeIP returns the Node's first IPv4 InternalIP.
func nodeIP(n *corev1.Node) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}
