package config

import (
	"fmt"
	"math"
	"net"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// KeyPathBandwidth gives paths their capacity: a YAML map of path id
// ("<remote cluster id>/<host>", the host of the entry's endpoint or of one of its paths;
// `patronus paths` lists them) to whole Mbit/s. The bulk class takes the path with the
// most bandwidth, and pods' min-bandwidth-mbps guarantees are shaped on paths whose
// bandwidth is known.
const KeyPathBandwidth = "path-bandwidth"

// MaxPathBandwidthMbps bounds a path-bandwidth value (1 Tbit/s).
const MaxPathBandwidthMbps = 1_000_000

// PathEntry is one path of a remote cluster: the first of its endpoint and paths entries
// (in that order) with a given host.
type PathEntry struct {
	// Host is the entry's host; the path id is "<cluster id>/<host>".
	Host string
	// Entry is the configured host:port.
	Entry string
}

// PathEntries lists r's paths: one per distinct host among its endpoint and paths, in that
// order, skipping entries that are not host:port (probe.PathsFromConfig names paths the
// same way).
func (r RemoteCluster) PathEntries() []PathEntry {
	var out []PathEntry
	for _, e := range append([]string{r.Endpoint}, r.Paths...) {
		h, _, err := net.SplitHostPort(e)
		if err != nil || slices.ContainsFunc(out, func(p PathEntry) bool { return p.Host == h }) {
			continue
		}
		out = append(out, PathEntry{Host: h, Entry: e})
	}
	return out
}

// PathIDs lists the path ids of the remote clusters (PathEntries).
func PathIDs(rcs []RemoteCluster) []string {
	var out []string
	for _, r := range rcs {
		for _, p := range r.PathEntries() {
			if id := r.ID + "/" + p.Host; !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	return out
}

// parsePathBandwidth reads the path-bandwidth key against the remote clusters' paths.
func parsePathBandwidth(v string, rcs []RemoteCluster, cmErr func(string, error) error) (map[string]uint64, error) {
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(v), &raw); err != nil {
		return nil, cmErr(KeyPathBandwidth, fmt.Errorf(`not a YAML map of path id to Mbit/s, like "{c2/192.0.2.2: 100, c2/198.51.100.2: 1000}": %w`, err))
	}
	known := PathIDs(rcs)
	out := map[string]uint64{}
	ids := make([]string, 0, len(raw))
	for id := range raw {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		key := fmt.Sprintf("%s[%s]", KeyPathBandwidth, id)
		if !slices.Contains(known, id) {
			list := "none (remote-clusters lists no endpoint)"
			if len(known) > 0 {
				list = strings.Join(known, ", ")
			}
			return nil, cmErr(key, fmt.Errorf("%q is not a path of %s: the paths are %s", id, KeyRemoteClusters, list))
		}
		f, ok := raw[id].(float64)
		if !ok || f != math.Trunc(f) || f < 1 || f > MaxPathBandwidthMbps {
			return nil, cmErr(key, fmt.Errorf("%v: want a whole number of Mbit/s from 1 to %d", raw[id], MaxPathBandwidthMbps))
		}
		out[id] = uint64(f)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
