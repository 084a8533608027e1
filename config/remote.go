package config

import "net/netip"

// RemoteClustersSource names a remote-clusters list read from a file in errors.
const RemoteClustersSource = "remote-clusters file"

// ParseRemoteClusters parses and validates a remote-clusters YAML list exactly as the
// ConfigMap key is (the one parser of that format): for tools that read it from a file
// (`patronus mesh run --remote-clusters`). localID and localCIDR, when set, are checked
// against as Load does; source names the input in errors (default RemoteClustersSource).
func ParseRemoteClusters(yaml, localID string, localCIDR netip.Prefix, source string) ([]RemoteCluster, error) {
	if source == "" {
		source = RemoteClustersSource
	}
	return parseRemoteClusters(yaml, localID, localCIDR, func(key string, err error) error {
		return &Error{Source: source, Key: key, Err: err}
	})
}
