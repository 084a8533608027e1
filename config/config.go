// Package config builds the agent's configuration from its three sources (docs/CONTRACT.md):
// the environment (CLUSTER_ID, NODE_NAME), the patronus-config ConfigMap and the CNI
// conflist's sdwan section. It is pure: callers fetch the ConfigMap and read the conflist
// file; Load validates everything and names the offending key in every error.
//
// Cluster id precedence: CLUSTER_ID > ConfigMap cluster-id > conflist sdwan.cluster_id.
// Any two sources that are set and disagree are an error naming both, because a node that
// silently picks one would join the wrong mesh.
package config

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/patronus/patronus/qos"
	"sigs.k8s.io/yaml"
)

// Names of the ConfigMap and its keys.
const (
	ConfigMapName      = "patronus-config"
	ConfigMapNamespace = "kube-system"

	KeyClusterID      = "cluster-id"
	KeyClusterCIDR    = "cluster-cidr"
	KeyServiceCIDR    = "service-cidr"
	KeyRemoteClusters = "remote-clusters"
	KeyNodeBlockSize  = "node-block-size"
	KeyDatapath       = "datapath"
	KeyMulticastGroup = "multicast-group"
	KeyKeyRotation    = "key-rotation"
	KeyProbeInterval  = "probe-interval"
	KeyMasquerade     = "masquerade"
	// KeyClusterSetIPRange is where MCS ClusterSetIPs come from (package mcs).
	KeyClusterSetIPRange = "clusterset-ip-range"
	// KeyNodeEncryption is node-to-node encryption (package nodenet): wireguard | none.
	KeyNodeEncryption = "node-encryption"
	// EnvNodeEncryption (or the agent's --node-encryption, same tier) overrides it.
	EnvNodeEncryption = "NODE_ENCRYPTION"

	EnvClusterID = "CLUSTER_ID"
	EnvNodeName  = "NODE_NAME"

	// DefaultBridge is the bridge the plugin uses unless the conflist says otherwise.
	DefaultBridge = "cni-bridge0"
	// DefaultConflistPath is where install-cni writes the conflist.
	DefaultConflistPath = "/etc/cni/net.d/10-patronus.conflist"
	// DefaultGossipPort is the Serf port used when a remote cluster gives no gossip address.
	DefaultGossipPort = 7946
)

// Datapath selects the enforcement datapath.
type Datapath string

// Datapaths.
const (
	DatapathEBPF     Datapath = "ebpf"
	DatapathNftables Datapath = "nftables"
	DatapathBoth     Datapath = "both"
)

// Defaults of the optional keys (docs/CONTRACT.md).
const (
	DefaultNodeBlockSize  = 24
	DefaultDatapath       = DatapathBoth
	DefaultMulticastGroup = "239.255.77.77:7947"
	DefaultKeyRotation    = 24 * time.Hour
	DefaultProbeInterval  = 50 * time.Millisecond
	// DefaultClusterSetIPRange lies just above Kubernetes' default Service range
	// 10.96.0.0/12 (mcs/resolve has the same value; config does not import it).
	DefaultClusterSetIPRange = "10.112.0.0/16"
)

// RemoteCluster is one entry of the remote-clusters list. These are hints: signed mesh
// state decides what is programmed.
type RemoteCluster struct {
	ID        string       `json:"id"`
	Endpoint  string       `json:"endpoint"` // WireGuard endpoint host:port
	CIDR      netip.Prefix `json:"cidr"`
	Gossip    string       `json:"gossip"`              // Serf address host:port; defaults to endpoint host:7946
	PublicKey []byte       `json:"publicKey,omitempty"` // pinned Ed25519 cluster key (32 bytes), nil if not given
	Paths     []string     `json:"paths,omitempty"`     // extra underlay endpoints host:port
}

// Config is the validated agent configuration.
type Config struct {
	NodeName        string
	ClusterID       string
	ClusterIDSource string       // which source the id came from, for logs and status
	ClusterCIDR     netip.Prefix // zero if not configured
	ServiceCIDR     netip.Prefix // zero if not configured
	RemoteClusters  []RemoteCluster
	NodeBlockSize   int
	Datapath        Datapath
	MulticastGroup  netip.AddrPort
	KeyRotation     time.Duration
	ProbeInterval   time.Duration
	// Masquerade is whether pod traffic leaving the cluster CIDR is masqueraded to the
	// node address (key masquerade, default true).
	Masquerade bool
	// ClusterSetIPRange is where ClusterSetIPs are taken from (key clusterset-ip-range,
	// default 10.112.0.0/16; IPv4, overlapping neither cluster-cidr nor service-cidr). Zero
	// when the default overlaps one of them and no key is set: MCS imports are then off
	// and Warnings says why.
	ClusterSetIPRange netip.Prefix
	// PathBandwidth is each path's capacity in Mbit/s by path id (key path-bandwidth;
	// nil: none known).
	PathBandwidth map[string]uint64
	// NodeEncryption is node-to-node encryption: NodeEncryptionNone (default) or
	// NodeEncryptionWireGuard (NODE_ENCRYPTION / --node-encryption, else the ConfigMap's
	// node-encryption); NodeEncryptionSource names where it came from ("" default).
	NodeEncryption       string
	NodeEncryptionSource string
	// NodeEncryptionStrict: pod traffic between nodes is dropped rather than sent in the
	// clear (NODE_ENCRYPTION_STRICT / --node-encryption-strict, else the ConfigMap's
	// node-encryption-strict; default false; needs NodeEncryptionWireGuard).
	NodeEncryptionStrict       bool
	NodeEncryptionStrictSource string
	// NodeEncryptionKeyRotation rotates the node-to-node key this often (ConfigMap
	// node-encryption-key-rotation; 0, the default: only on demand).
	NodeEncryptionKeyRotation time.Duration

	// From the conflist.
	Bridge          string
	DefaultQoSClass qos.Class
	Database        string // sdwan.database, empty if the conflist gives none

	// Warnings are non-fatal findings (unknown ConfigMap keys: probably typos).
	Warnings []string
}

// Input is everything Load needs. Empty strings and nil maps mean "source absent".
type Input struct {
	// ClusterIDEnv is the value of CLUSTER_ID (or the --cluster-id flag, same precedence).
	ClusterIDEnv string
	// NodeName is NODE_NAME (or --node-name).
	NodeName string
	// NodeEncryptionEnv is NODE_ENCRYPTION (or --node-encryption, same precedence): over
	// the ConfigMap's node-encryption.
	NodeEncryptionEnv string
	// NodeEncryptionStrictEnv is NODE_ENCRYPTION_STRICT (or --node-encryption-strict):
	// over the ConfigMap's node-encryption-strict.
	NodeEncryptionStrictEnv string
	// ConfigMap is the data of kube-system/patronus-config; nil if it does not exist.
	ConfigMap map[string]string
	// Conflist is the content of the CNI conflist file, nil if absent; ConflistPath names
	// it in errors.
	Conflist     []byte
	ConflistPath string
	// ConfigMapNamespace names the ConfigMap's namespace in messages (default kube-system).
	ConfigMapNamespace string
}

// Error is a configuration error naming its source and key.
type Error struct {
	Source string // e.g. "ConfigMap kube-system/patronus-config"
	Key    string // e.g. "remote-clusters[1].cidr"
	Err    error
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid configuration: %s key %s: %v", e.Source, e.Key, e.Err)
}
func (e *Error) Unwrap() error { return e.Err }

// ConfigMapSource names the ConfigMap (in the default namespace) in errors.
const ConfigMapSource = "ConfigMap " + ConfigMapNamespace + "/" + ConfigMapName

func configMapSource(ns string) string {
	if ns == "" {
		return ConfigMapSource
	}
	return "ConfigMap " + ns + "/" + ConfigMapName
}

// knownKeys is the set of ConfigMap keys the agent reads.
func knownKeys() map[string]bool {
	return map[string]bool{KeyClusterID: true, KeyClusterCIDR: true, KeyServiceCIDR: true, KeyRemoteClusters: true,
		KeyNodeBlockSize: true, KeyDatapath: true, KeyMulticastGroup: true, KeyKeyRotation: true, KeyProbeInterval: true,
		KeyMasquerade: true, KeyClusterSetIPRange: true, KeyPathBandwidth: true,
		KeyNodeEncryption: true, KeyNodeEncryptionStrict: true, KeyNodeEncryptionKeyRotation: true}
}

// dns1123Label is the shape of cluster ids and node-independent names: they end up in
// interface names, Serf tags and metric labels. Compiled on first use, not at package init:
// every CNI plugin call runs this binary's inits.
var dns1123Label = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`) })

func validateID(s string) error {
	if len(s) > 63 || !dns1123Label().MatchString(s) {
		return fmt.Errorf("%q is not a valid id: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit", s)
	}
	return nil
}

// Load validates in and returns the configuration. Every error names the key at fault.
func Load(in Input) (Config, error) {
	cfg := Config{
		NodeName:        in.NodeName,
		NodeBlockSize:   DefaultNodeBlockSize,
		Datapath:        DefaultDatapath,
		MulticastGroup:  netip.MustParseAddrPort(DefaultMulticastGroup),
		KeyRotation:     DefaultKeyRotation,
		ProbeInterval:   DefaultProbeInterval,
		Masquerade:      true,
		NodeEncryption:  NodeEncryptionNone,
		Bridge:          DefaultBridge,
		DefaultQoSClass: qos.DefaultClass,
	}
	if in.NodeName == "" {
		return Config{}, &Error{Source: "environment", Key: EnvNodeName, Err: errors.New("not set: the agent must know its node (set NODE_NAME from spec.nodeName, or pass --node-name)")}
	}

	conflistSource := "conflist " + in.ConflistPath
	cmSource := configMapSource(in.ConfigMapNamespace)
	var conf conflistInfo
	if in.Conflist != nil {
		c, kerr := parseConflist(in.Conflist)
		if kerr != nil {
			return Config{}, &Error{Source: conflistSource, Key: kerr.key, Err: kerr.err}
		}
		conf = c
		if conf.bridge != "" {
			cfg.Bridge = conf.bridge
		}
		cfg.Database = conf.database
		if conf.defaultQoS != "" {
			c, err := qos.ParseClass(conf.defaultQoS)
			if err != nil {
				return Config{}, &Error{Source: conflistSource, Key: "sdwan.default_qos_class", Err: err}
			}
			cfg.DefaultQoSClass = c
		}
	}

	// Cluster id: collect every source that is set, check they agree.
	type idSource struct{ name, value string }
	var ids []idSource
	if in.ClusterIDEnv != "" {
		ids = append(ids, idSource{"environment " + EnvClusterID, in.ClusterIDEnv})
	}
	if v, ok := in.ConfigMap[KeyClusterID]; ok {
		ids = append(ids, idSource{cmSource + " key " + KeyClusterID, strings.TrimSpace(v)})
	}
	if conf.clusterID != "" {
		ids = append(ids, idSource{conflistSource + " key sdwan.cluster_id", conf.clusterID})
	}
	if len(ids) == 0 {
		return Config{}, &Error{Source: "environment", Key: EnvClusterID, Err: fmt.Errorf("cluster id not set: set %s, %s key %s, or sdwan.cluster_id in the conflist", EnvClusterID, cmSource, KeyClusterID)}
	}
	for _, s := range ids[1:] {
		if s.value != ids[0].value {
			return Config{}, fmt.Errorf("invalid configuration: cluster id disagrees: %s is %q but %s is %q; make them equal or remove one", ids[0].name, ids[0].value, s.name, s.value)
		}
	}
	if err := validateID(ids[0].value); err != nil {
		return Config{}, fmt.Errorf("invalid configuration: %s: %w", ids[0].name, err)
	}
	cfg.ClusterID, cfg.ClusterIDSource = ids[0].value, ids[0].name

	if err := applyConfigMap(&cfg, in.ConfigMap, cmSource); err != nil {
		return Config{}, err
	}
	if v := strings.TrimSpace(in.NodeEncryptionEnv); v != "" {
		e, err := ParseNodeEncryption(v)
		if err != nil {
			return Config{}, &Error{Source: "environment", Key: EnvNodeEncryption, Err: err}
		}
		cfg.NodeEncryption, cfg.NodeEncryptionSource = e, "environment "+EnvNodeEncryption
	}
	if err := loadNodeEncryptionStrict(&cfg, in, cmSource); err != nil {
		return Config{}, err
	}
	if err := loadNodeEncryptionKeyRotation(&cfg, in.ConfigMap, cmSource); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Node-to-node encryption modes (ConfigMap node-encryption).
const (
	NodeEncryptionNone      = "none"
	NodeEncryptionWireGuard = "wireguard"
)

// ParseNodeEncryption validates a node-encryption value (surrounding space ignored):
// NodeEncryptionNone or NodeEncryptionWireGuard; anything else, "" too, is an error
// "<value quoted>: accepted values are wireguard and none" for the caller to prefix with
// where the value came from. Every source of the setting (ConfigMap, NODE_ENCRYPTION,
// the agent's and `patronus mesh run`'s --node-encryption) is checked with it.
func ParseNodeEncryption(v string) (string, error) {
	switch s := strings.TrimSpace(v); s {
	case NodeEncryptionNone, NodeEncryptionWireGuard:
		return s, nil
	default:
		return "", fmt.Errorf("%q: accepted values are %s and %s", v, NodeEncryptionWireGuard, NodeEncryptionNone)
	}
}

// parseBool reads a true | false setting (strconv.ParseBool's spellings, surrounding space
// ignored); the error quotes v for the caller to prefix with where it came from.
func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("%q: accepted values are true and false", v)
	}
	return b, nil
}

func applyConfigMap(cfg *Config, data map[string]string, source string) error {
	cmErr := func(key string, err error) error { return &Error{Source: source, Key: key, Err: err} }
	known := knownKeys()
	var unknown []string
	for k := range data {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s: unknown key %q ignored", source, k))
	}

	if v, ok := data[KeyClusterCIDR]; ok {
		p, err := parseCIDR(v)
		if err != nil {
			return cmErr(KeyClusterCIDR, err)
		}
		cfg.ClusterCIDR = p
	}
	if v, ok := data[KeyServiceCIDR]; ok {
		p, err := parseCIDR(v)
		if err != nil {
			return cmErr(KeyServiceCIDR, err)
		}
		cfg.ServiceCIDR = p
	}
	if cfg.ClusterCIDR.IsValid() && cfg.ServiceCIDR.IsValid() && cfg.ClusterCIDR.Overlaps(cfg.ServiceCIDR) {
		return cmErr(KeyServiceCIDR, fmt.Errorf("%s overlaps %s %s", cfg.ServiceCIDR, KeyClusterCIDR, cfg.ClusterCIDR))
	}
	if err := loadClusterSetIPRange(cfg, data, cmErr); err != nil {
		return err
	}
	if v, ok := data[KeyNodeBlockSize]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return cmErr(KeyNodeBlockSize, fmt.Errorf("%q is not a prefix length", v))
		}
		if cfg.ClusterCIDR.IsValid() {
			maxBits := cfg.ClusterCIDR.Addr().BitLen()
			if n < cfg.ClusterCIDR.Bits() || n > maxBits-2 {
				return cmErr(KeyNodeBlockSize, fmt.Errorf("%d must be between the %s prefix length %d and %d", n, KeyClusterCIDR, cfg.ClusterCIDR.Bits(), maxBits-2))
			}
		} else if n < 1 || n > 126 {
			return cmErr(KeyNodeBlockSize, fmt.Errorf("%d is not a usable prefix length", n))
		}
		cfg.NodeBlockSize = n
	}
	if v, ok := data[KeyDatapath]; ok {
		switch d := Datapath(strings.TrimSpace(v)); d {
		case DatapathEBPF, DatapathNftables, DatapathBoth:
			cfg.Datapath = d
		default:
			return cmErr(KeyDatapath, fmt.Errorf("%q: accepted values are ebpf, nftables, both", v))
		}
	}
	if v, ok := data[KeyMulticastGroup]; ok {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(v))
		if err != nil {
			return cmErr(KeyMulticastGroup, fmt.Errorf("%q is not an address:port: %w", v, err))
		}
		if !ap.Addr().IsMulticast() || ap.Port() == 0 {
			return cmErr(KeyMulticastGroup, fmt.Errorf("%q must be a multicast address with a non-zero port, like %s", v, DefaultMulticastGroup))
		}
		cfg.MulticastGroup = ap
	}
	if v, ok := data[KeyKeyRotation]; ok {
		d, err := parsePositiveDuration(v, time.Minute)
		if err != nil {
			return cmErr(KeyKeyRotation, err)
		}
		cfg.KeyRotation = d
	}
	if v, ok := data[KeyProbeInterval]; ok {
		d, err := parsePositiveDuration(v, time.Millisecond)
		if err != nil {
			return cmErr(KeyProbeInterval, err)
		}
		cfg.ProbeInterval = d
	}
	if v, ok := data[KeyNodeEncryption]; ok {
		e, err := ParseNodeEncryption(v)
		if err != nil {
			return cmErr(KeyNodeEncryption, err)
		}
		cfg.NodeEncryption, cfg.NodeEncryptionSource = e, source+" key "+KeyNodeEncryption
	}
	if v, ok := data[KeyMasquerade]; ok {
		b, err := parseBool(v)
		if err != nil {
			return cmErr(KeyMasquerade, err)
		}
		cfg.Masquerade = b
	}
	if v, ok := data[KeyRemoteClusters]; ok {
		rcs, err := parseRemoteClusters(v, cfg.ClusterID, cfg.ClusterCIDR, cmErr)
		if err != nil {
			return err
		}
		cfg.RemoteClusters = rcs
	}
	if v, ok := data[KeyPathBandwidth]; ok {
		bw, err := parsePathBandwidth(v, cfg.RemoteClusters, cmErr)
		if err != nil {
			return err
		}
		cfg.PathBandwidth = bw
	}
	return nil
}

// loadClusterSetIPRange sets cfg.ClusterSetIPRange from the key or the default. VIPs are
// IPv4 only (the datapath's limit) and must not be pod or Service addresses: traffic to
// them would be translated away from the real pod or Service.
func loadClusterSetIPRange(cfg *Config, data map[string]string, cmErr func(string, error) error) error {
	v, explicit := data[KeyClusterSetIPRange]
	if !explicit {
		v = DefaultClusterSetIPRange
	}
	p, err := parseCIDR(v)
	if err != nil {
		return cmErr(KeyClusterSetIPRange, err)
	}
	if !p.Addr().Is4() || p.Bits() > 30 {
		return cmErr(KeyClusterSetIPRange, fmt.Errorf("%s must be an IPv4 range of at least 4 addresses (/30 or shorter), like %s", p, DefaultClusterSetIPRange))
	}
	for _, r := range []struct {
		key string
		p   netip.Prefix
	}{{KeyClusterCIDR, cfg.ClusterCIDR}, {KeyServiceCIDR, cfg.ServiceCIDR}} {
		if !r.p.IsValid() || !r.p.Overlaps(p) {
			continue
		}
		if explicit {
			return cmErr(KeyClusterSetIPRange, fmt.Errorf("%s overlaps %s %s: choose a range used by no pod, Service or node", p, r.key, r.p))
		}
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("the default %s %s overlaps %s %s: Multi-Cluster Services imports are off until %s is set",
			KeyClusterSetIPRange, p, r.key, r.p, KeyClusterSetIPRange))
		return nil
	}
	cfg.ClusterSetIPRange = p
	return nil
}

func parseCIDR(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %w", v, err)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", v, p.Masked())
	}
	return p, nil
}

func parsePositiveDuration(v string, min time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration like 24h or 50ms: %w", v, err)
	}
	if d < min {
		return 0, fmt.Errorf("%q must be at least %s", v, min)
	}
	return d, nil
}

// hostPort validates host:port where host is an IP or a DNS name.
func hostPort(v string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(v)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", v, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("%q has an invalid port", v)
	}
	if h == "" {
		return "", 0, fmt.Errorf("%q has an empty host", v)
	}
	if _, err := netip.ParseAddr(h); err != nil && !validHostname(h) {
		return "", 0, fmt.Errorf("%q: host %q is neither an IP address nor a DNS name", v, h)
	}
	return h, n, nil
}

var hostnameRe = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.?$`)
})

func validHostname(h string) bool { return len(h) <= 253 && hostnameRe().MatchString(h) }

// remoteClusterYAML is the wire shape of one remote-clusters entry. Unknown fields are
// rejected (yaml.UnmarshalStrict) so a typo like "endpiont" is an error, not a silent hole.
type remoteClusterYAML struct {
	ID        string   `json:"id"`
	Endpoint  string   `json:"endpoint"`
	CIDR      string   `json:"cidr"`
	Gossip    string   `json:"gossip,omitempty"`
	PublicKey string   `json:"publicKey,omitempty"`
	Paths     []string `json:"paths,omitempty"`
}

func parseRemoteClusters(v, localID string, localCIDR netip.Prefix, cmErr func(string, error) error) ([]RemoteCluster, error) {
	var raw []remoteClusterYAML
	if err := yaml.UnmarshalStrict([]byte(v), &raw); err != nil {
		return nil, cmErr(KeyRemoteClusters, fmt.Errorf("not a YAML list of {id, endpoint, cidr, gossip?, publicKey?, paths?}: %w", err))
	}
	out := make([]RemoteCluster, 0, len(raw))
	seen := map[string]int{}
	for i, r := range raw {
		key := func(field string) string { return fmt.Sprintf("%s[%d].%s", KeyRemoteClusters, i, field) }
		if r.ID == "" {
			return nil, cmErr(key("id"), errors.New("missing"))
		}
		if err := validateID(r.ID); err != nil {
			return nil, cmErr(key("id"), err)
		}
		if r.ID == localID {
			return nil, cmErr(key("id"), fmt.Errorf("%q is this cluster's own id", r.ID))
		}
		if j, dup := seen[r.ID]; dup {
			return nil, cmErr(key("id"), fmt.Errorf("%q already used by %s[%d]", r.ID, KeyRemoteClusters, j))
		}
		seen[r.ID] = i
		if r.Endpoint == "" {
			return nil, cmErr(key("endpoint"), errors.New("missing (the WireGuard endpoint host:port)"))
		}
		host, _, err := hostPort(r.Endpoint)
		if err != nil {
			return nil, cmErr(key("endpoint"), err)
		}
		if r.CIDR == "" {
			return nil, cmErr(key("cidr"), errors.New("missing"))
		}
		cidr, err := parseCIDR(r.CIDR)
		if err != nil {
			return nil, cmErr(key("cidr"), err)
		}
		if localCIDR.IsValid() && cidr.Overlaps(localCIDR) {
			return nil, cmErr(key("cidr"), fmt.Errorf("%s overlaps this cluster's %s %s", cidr, KeyClusterCIDR, localCIDR))
		}
		for _, prev := range out {
			if prev.CIDR.Overlaps(cidr) {
				return nil, cmErr(key("cidr"), fmt.Errorf("%s overlaps the cidr %s of remote cluster %q", cidr, prev.CIDR, prev.ID))
			}
		}
		rc := RemoteCluster{ID: r.ID, Endpoint: r.Endpoint, CIDR: cidr, Gossip: r.Gossip}
		if rc.Gossip == "" {
			rc.Gossip = net.JoinHostPort(host, strconv.Itoa(DefaultGossipPort))
		} else if _, _, err := hostPort(rc.Gossip); err != nil {
			return nil, cmErr(key("gossip"), err)
		}
		if r.PublicKey != "" {
			k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.PublicKey))
			if err != nil || len(k) != 32 {
				return nil, cmErr(key("publicKey"), fmt.Errorf("must be a base64 Ed25519 public key (32 bytes)"))
			}
			rc.PublicKey = k
		}
		for j, p := range r.Paths {
			if _, _, err := hostPort(p); err != nil {
				return nil, cmErr(fmt.Sprintf("%s[%d].paths[%d]", KeyRemoteClusters, i, j), err)
			}
			rc.Paths = append(rc.Paths, p)
		}
		out = append(out, rc)
	}
	return out, nil
}

// conflistInfo is what the agent reads from the conflist: the patronus-cni entry only.
type conflistInfo struct {
	bridge, clusterID, database, defaultQoS string
}

type keyErr struct {
	key string
	err error
}

// parseConflist finds the patronus-cni plugin in a conflist (or a single-plugin .conf).
func parseConflist(b []byte) (conflistInfo, *keyErr) {
	type plugin struct {
		Type   string `json:"type"`
		Bridge string `json:"bridge"`
		SDWAN  *struct {
			ClusterID       string `json:"cluster_id"`
			Database        string `json:"database"`
			DefaultQoSClass string `json:"default_qos_class"`
		} `json:"sdwan"`
	}
	var doc struct {
		plugin
		Plugins []plugin `json:"plugins"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return conflistInfo{}, &keyErr{"(file)", fmt.Errorf("not valid JSON: %w", err)}
	}
	plugins := doc.Plugins
	if len(plugins) == 0 {
		plugins = []plugin{doc.plugin}
	}
	for _, p := range plugins {
		if p.Type != "patronus-cni" {
			continue
		}
		info := conflistInfo{bridge: p.Bridge}
		if p.SDWAN != nil {
			info.clusterID = p.SDWAN.ClusterID
			info.database = p.SDWAN.Database
			info.defaultQoS = p.SDWAN.DefaultQoSClass
		}
		return info, nil
	}
	return conflistInfo{}, &keyErr{"plugins", errors.New(`no plugin of type "patronus-cni"`)}
}
