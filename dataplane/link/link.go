// Package link makes the node-side kernel changes of a pod attachment: the bridge with its
// gateway address, the veth pair with one end moved into the pod's network namespace, the
// pod's addresses and routes, and IP forwarding. Everything goes through the Kernel
// interface so callers (the CNI plugin) can be tested with a fake; Netlink is the real
// implementation, which works in the network namespace of the calling process (the node)
// and reaches pod namespaces through netlink handles opened in them, so no OS thread ever
// switches namespace.
package link

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
)

// HostVethPrefix starts every host-side veth name Patronus creates (docs/CONTRACT.md).
const HostVethPrefix = "pt"

// HostVethName is the host-side veth name of the attachment (containerID, ifname):
// "pt" + 10 hex characters of a SHA-256 over both, so DEL and GC can find the veth
// without any stored state and two attachments of one container get different names.
func HostVethName(containerID, ifname string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifname))
	return HostVethPrefix + hex.EncodeToString(h[:5])
}

// IsHostVethName reports whether name has the shape HostVethName produces.
func IsHostVethName(name string) bool {
	if len(name) != len(HostVethPrefix)+10 || name[:len(HostVethPrefix)] != HostVethPrefix {
		return false
	}
	_, err := hex.DecodeString(name[len(HostVethPrefix):])
	return err == nil
}

// ErrNotFound is returned (wrapped) when a link or namespace does not exist.
var ErrNotFound = errors.New("not found")

// Link describes an interface as the CNI result reports it.
type Link struct {
	Name   string
	Index  int
	MAC    string
	MTU    int
	Master int // ifindex of the bridge the link is attached to, 0 if none
}

// Route is a route inside the pod. An invalid GW means "on link".
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// BridgeSpec is the bridge ADD wants to exist.
type BridgeSpec struct {
	Name string
	MTU  int // 0: kernel default
	// Addrs are the gateway addresses with the subnet's prefix length (10.244.0.1/16).
	Addrs []netip.Prefix
}

// VethSpec is one veth pair: HostName stays in the node namespace attached to Bridge,
// PodIfName is created directly inside the namespace at PodNetns (a path such as
// /var/run/netns/x or /proc/<pid>/ns/net).
type VethSpec struct {
	HostName  string
	PodIfName string
	PodNetns  string
	Bridge    string
	// BridgeIndex, when known (from EnsureBridge), saves looking Bridge up.
	BridgeIndex int
	MTU         int
}

// PodConfig is what the pod side of the veth gets.
type PodConfig struct {
	Netns  string
	IfName string
	Addrs  []netip.Prefix
	Routes []Route
	// Checked by CheckPod only, when non-zero: the MTU, and the ifindex of the host end
	// the pod interface must be the veth peer of.
	MTU       int
	HostIndex int
}

// Kernel is every kernel change and query the CNI plugin makes. Implementations must be
// safe for concurrent use by many processes: "already exists" is success where the
// desired state is the same, and deleting what is gone is success.
type Kernel interface {
	// EnsureBridge creates the bridge if missing, adds the addresses it lacks and sets it up.
	EnsureBridge(BridgeSpec) (Link, error)
	// AddVeth creates the pair, attaches the host end to the bridge and sets it up. It
	// fails if PodIfName already exists in the pod namespace. A leftover host end of the
	// same name (an ADD retried after a crash) is replaced.
	AddVeth(VethSpec) (host, pod Link, err error)
	// ConfigurePod adds addresses and routes to the pod interface and sets it up.
	ConfigurePod(PodConfig) error
	// CheckPod verifies the pod interface exists with every address and route of cfg.
	CheckPod(PodConfig) error
	// DeleteLink removes a node-side link; a missing link is not an error.
	DeleteLink(name string) error
	// DeletePodLink removes the interface inside the pod namespace; a missing namespace or
	// interface is not an error.
	DeletePodLink(netns, ifname string) error
	// LinkByName returns a node-side link or an error wrapping ErrNotFound.
	LinkByName(name string) (Link, error)
	// HostVeths lists node-side links whose name IsHostVethName.
	HostVeths() ([]Link, error)
	// EnableForwarding turns on IPv4 (and, if v6, IPv6) forwarding in the node namespace.
	EnableForwarding(v4, v6 bool) error
}
