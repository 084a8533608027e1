// Package enforce is the NetworkPolicy datapath: it turns the compiled per-endpoint
// rules of package policy into kernel state. The eBPF implementation here loads the
// programs of package bpf, pins programs, maps and TCX links in bpffs (so enforcement
// and connection tracking survive an agent restart), attaches them at TC ingress and
// egress of each pod's host-side veth and keeps the maps equal to the desired rules.
// Package dataplane/nft implements the same Enforcer with nftables.
package enforce

import (
	"context"
	"errors"
	"fmt"

	"github.com/patronus/patronus/policy"
)

// Endpoint is one local pod as the datapath sees it.
type Endpoint struct {
	policy.EndpointPolicy
	// HostVeth is the name of the pod's host-side veth (in the node namespace).
	HostVeth string
	// Priority is written to skb->priority of the pod's packets (its QoS class); 0
	// leaves the kernel's value.
	Priority uint32
	// AuditAllowed also reports allowed new flows as events (namespace audit=all).
	AuditAllowed bool
}

// Key names an endpoint: "namespace/pod".
func (e Endpoint) Key() string { return e.Namespace + "/" + e.Pod }

// Enforcer makes the datapath enforce a set of endpoints' policies.
//
// Set is level-based: endpoints is the whole desired state for this node; endpoints not
// in it lose their enforcement state. It may be called any number of times with the same
// input, and only changed entries are written. An endpoint whose interface does not
// exist yet is skipped and reported in the returned error (wrapping ErrNoInterface);
// the others are still applied.
//
// Remove drops one endpoint's state at once (CNI DEL), without waiting for the next Set.
// Close releases the Enforcer's resources but leaves enforcement in place (pinned), so
// a restarted agent continues where this one stopped.
type Enforcer interface {
	Set(ctx context.Context, endpoints []Endpoint) error
	Remove(ctx context.Context, ep Endpoint) error
	Close() error
}

// ErrNoInterface is wrapped by Set's error for endpoints whose host veth is missing.
var ErrNoInterface = errors.New("endpoint interface not found")

// Mode chooses the datapaths that enforce policy.
type Mode string

const (
	ModeEBPF     Mode = "ebpf"
	ModeNftables Mode = "nftables"
	ModeBoth     Mode = "both"
)

// ParseMode accepts the ConfigMap's `datapath` values; "" means both.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "":
		return ModeBoth, nil
	case ModeEBPF, ModeNftables, ModeBoth:
		return Mode(s), nil
	}
	return "", fmt.Errorf("datapath %q: want ebpf, nftables or both", s)
}

// UsesEBPF and UsesNftables tell which enforcers a mode needs.
func (m Mode) UsesEBPF() bool     { return m == ModeEBPF || m == ModeBoth }
func (m Mode) UsesNftables() bool { return m == ModeNftables || m == ModeBoth }

// Multi applies every call to all enforcers (mode "both": two independent layers).
// Errors are joined; one layer failing does not stop the other.
func Multi(es ...Enforcer) Enforcer { return multi(es) }

type multi []Enforcer

func (m multi) Set(ctx context.Context, eps []Endpoint) error {
	var errs []error
	for _, e := range m {
		errs = append(errs, e.Set(ctx, eps))
	}
	return errors.Join(errs...)
}

func (m multi) Remove(ctx context.Context, ep Endpoint) error {
	var errs []error
	for _, e := range m {
		errs = append(errs, e.Remove(ctx, ep))
	}
	return errors.Join(errs...)
}

func (m multi) Close() error {
	var errs []error
	for _, e := range m {
		errs = append(errs, e.Close())
	}
	return errors.Join(errs...)
}
