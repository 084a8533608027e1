package tunnel

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/wg"
)

// Per-path tunnels. A remote cluster reachable over several underlay paths (its
// remote-clusters entry's endpoint and paths, one path per distinct host, in that order:
// probe.PathsFromConfig) gets one WireGuard session per path, so that pods of different
// QoS classes can take different paths at the same time (dataplane/steer). WireGuard has
// one endpoint per peer and one peer per public key on a device, so each path needs a
// device of its own on both gateways: path index 0 (the endpoint's host) stays on the
// gateway's main device wg-<cluster> (port P, the --wg-port), path index k ≥ 1 is carried
// by device PathInterfaceName(local, k) listening on P+k, and sends to the k-th host at
// the configured port + k. Every remote cluster's k-th path shares device k (one peer per
// cluster on it). Both ends must list the same links in the same order (the k-th path of
// A towards B is the k-th path of B towards A), which is how a ConfigMap pair describes
// two gateways' links anyway. All devices share the gateway's one key, so the tunnel
// announcement (one public key) covers them.

// PathRef is one underlay path of a remote cluster as the tunnels see it.
type PathRef struct {
	Cluster string
	// ID is the path id, "<cluster>/<host>" (probe.PathsFromConfig).
	ID string
	// Index is 0 for the entry's endpoint host (the main device), k ≥ 1 for the k-th
	// further distinct host.
	Index int
	// Endpoint is where the path's device sends: the configured host and port, plus Index
	// on the port (the remote gateway's device k listens on its base port + k). Invalid
	// when the configured host is not an IP address.
	Endpoint netip.AddrPort
}

// PathRefs lists the paths of every remote cluster, in configuration order.
func PathRefs(rcs []config.RemoteCluster) []PathRef {
	var out []PathRef
	for _, rc := range rcs {
		for i, pe := range rc.PathEntries() {
			_, p, _ := net.SplitHostPort(pe.Entry)
			ref := PathRef{Cluster: rc.ID, ID: rc.ID + "/" + pe.Host, Index: i}
			port, perr := strconv.Atoi(p)
			if ad, aerr := netip.ParseAddr(pe.Host); aerr == nil && perr == nil && port+ref.Index <= 65535 {
				ref.Endpoint = netip.AddrPortFrom(ad.Unmap(), uint16(port+ref.Index))
			}
			out = append(out, ref)
		}
	}
	return out
}

// MaxPathIndex is the highest path index of refs (0: every remote cluster has one path,
// no per-path device is needed).
func MaxPathIndex(refs []PathRef) int {
	n := 0
	for _, r := range refs {
		n = max(n, r.Index)
	}
	return n
}

// MaxPathDevices bounds the path index: dataplane/steer numbers at most 255 paths, and
// names must stay within 15 characters.
const MaxPathDevices = 99

// PathInterfaceName is the device of path index k (1..MaxPathDevices) of a gateway of
// cluster clusterID: "wg" + k + "-" + the cluster id when the name stays within 15
// characters and the id is a valid name part, otherwise "wg" + k + "-" + hex of the id's
// SHA-256 up to 15 characters (wg-lab-c1's path 1 is wg1-lab-c1).
func PathInterfaceName(clusterID string, k int) string {
	prefix := "wg" + strconv.Itoa(k) + "-"
	room := 15 - len(prefix)
	if main := wg.InterfaceName(clusterID); main == wg.InterfacePrefix+clusterID && len(clusterID) <= room {
		return prefix + clusterID
	}
	h := sha256.Sum256([]byte(clusterID))
	return prefix + hex.EncodeToString(h[:])[:room]
}

// PathPort is the listen port of path index k's device on a gateway whose WireGuard port
// is base.
func PathPort(base, k int) int { return base + k }

// PathDevice is a per-path device as the plan sees it.
type PathDevice struct {
	Index int
	Name  string
}

// PathDeviceSpecs are the device specs of path indexes 1..n of a gateway whose main
// device is spec (same key and MTU; name PathInterfaceName, port PathPort).
func PathDeviceSpecs(clusterID string, spec wg.Spec, n int) ([]wg.Spec, error) {
	if n > MaxPathDevices {
		return nil, fmt.Errorf("tunnel: %d paths to one remote cluster: at most %d", n+1, MaxPathDevices+1)
	}
	if PathPort(spec.ListenPort, n) > 65535 {
		return nil, fmt.Errorf("tunnel: per-path port %d of path %d is not a UDP port", PathPort(spec.ListenPort, n), n)
	}
	var out []wg.Spec
	for k := 1; k <= n; k++ {
		s := spec
		s.Name, s.ListenPort = PathInterfaceName(clusterID, k), PathPort(spec.ListenPort, k)
		out = append(out, s)
	}
	return out, nil
}

// PathDeviceMap is the interface each path leaves by (path id → device), for
// dataplane/steer: index 0 the main device, index k the per-path device k when it is in
// devs. nil when no path has an index above 0 (a single tunnel per cluster: nothing to
// steer between).
func PathDeviceMap(refs []PathRef, main string, devs []PathDevice) map[string]string {
	if MaxPathIndex(refs) == 0 || len(devs) == 0 {
		return nil
	}
	out := map[string]string{}
	for _, r := range refs {
		if r.Index == 0 {
			out[r.ID] = main
			continue
		}
		if dev, ok := r.device(devs); ok {
			out[r.ID] = dev
		}
	}
	return out
}

// device is the per-path device of r (index ≥ 1) among devs; false when devs has none of
// its index or r has no endpoint to send to.
func (r PathRef) device(devs []PathDevice) (string, bool) {
	i := slices.IndexFunc(devs, func(d PathDevice) bool { return d.Index == r.Index })
	if i < 0 || !r.Endpoint.IsValid() {
		return "", false
	}
	return devs[i].Name, true
}

// IsPathInterfaceName reports whether name is some per-path device of cluster clusterID
// (any index), so that a gateway can remove the devices of paths no longer configured
// (kernel WireGuard links outlive the agent).
func IsPathInterfaceName(clusterID, name string) (int, bool) {
	for k := 1; k <= MaxPathDevices; k++ {
		if PathInterfaceName(clusterID, k) == name {
			return k, true
		}
	}
	return 0, false
}

// StalePathDevices are the names among links that are per-path devices of clusterID with
// an index above keep (paths removed from the configuration since they were made).
func StalePathDevices(clusterID string, links []string, keep int) []string {
	var out []string
	for _, l := range links {
		if k, ok := IsPathInterfaceName(clusterID, l); ok && k > keep {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// ValidSourceByMark turns on src_valid_mark on a per-path device in the calling thread's
// network namespace. Reverse-path filtering (net.ipv4.conf.*.rp_filter 1 or 2) drops a
// packet arriving on a device without an address whose source the main table routes via
// another device (the main table routes the remote cluster via the main device); with
// src_valid_mark the source is looked up with the packet's mark, which dataplane/steer
// sets to the path's on arrival, so the path's own table answers with this device.
func ValidSourceByMark(dev string) error {
	p := filepath.Join("/proc/sys/net/ipv4/conf", dev, "src_valid_mark")
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("tunnel: src_valid_mark on %s: %w", dev, err)
	}
	return nil
}
