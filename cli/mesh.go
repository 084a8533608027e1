package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

func newMeshCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "The gossip mesh on its own: a mesh-only agent (edge mode, tests) and key generation",
	}
	cmd.AddCommand(newMeshRunCmd(e), newMeshKeygenCmd(e))
	return cmd
}

func newMeshKeygenCmd(e env) *cobra.Command {
	var out string
	var gossip bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate a cluster signing key (file, public key printed) or, with --gossip, a gossip encryption key",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if gossip {
				k, err := trust.GenerateGossipKey()
				if err != nil {
					return err
				}
				return writeOrPrint(e, out, trust.EncodeGossipKey(k))
			}
			if out == "" {
				return usagef("--out FILE is required for a cluster key (its public key is printed)")
			}
			k, err := trust.GenerateClusterKey()
			if err != nil {
				return err
			}
			if err := writeOrPrint(e, out, trust.EncodePrivateKey(k)); err != nil {
				return err
			}
			_, err = fmt.Fprintln(e.stdout, trust.EncodeKey(k.Public().(ed25519.PublicKey)))
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the private key to (mode 0600)")
	cmd.Flags().BoolVar(&gossip, "gossip", false, "generate a gossip encryption key instead (printed unless --out)")
	return cmd
}

func writeOrPrint(e env, path, s string) error {
	if path == "" {
		_, err := fmt.Fprintln(e.stdout, s)
		return err
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	return nil
}

type meshRunFlags struct {
	node, cluster, clusterKey, gossipKey, remotes, clusterCIDR, serviceCIDR string
	announce, joins, ifaces, handlers, endpoints                            []string
	bind, advertise, group, socket, db, role, wgKey, profile                string
	logFormat, logLevel                                                     string
	noBeacons                                                               bool
	beaconEvery, refresh, ttl, reconnect                                    time.Duration
	certValidity                                                            time.Duration

	// Edge-mode pod networking (--pod-network): nodenet.EdgeController.
	podNetwork, masquerade bool
	nodeIP, confList       string
	blockSize              int
	nodeEncryption         string
	nodeEncryptionStrict   bool
	nodeKeyRotation        time.Duration
}

func newMeshRunCmd(e env) *cobra.Command {
	var f meshRunFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a mesh-only agent: multicast discovery, Serf gossip, signed announcements, local API on --socket",
		Long: `Run a mesh-only agent (edge mode: no Kubernetes API server). Keys come from files:
--cluster-key is the cluster's Ed25519 signing key (patronus mesh keygen); each node
certifies a fresh node key with it at start. Peers on the LAN are found with multicast
beacons; remote clusters are joined through --remote-clusters (the ConfigMap's YAML list,
whose publicKey entries are the pinned trusted keys) and --join.
The local API on --socket serves /v1/members, /v1/events, /v1/mesh, /v1/announcements
(see patronus members, patronus event) and /metrics.
With --pod-network it also runs edge-mode pod networking: the node's pod block is claimed
out of --cluster-cidr through the mesh (kept in --database), --cni-conflist is written for
it, the other nodes' blocks are routed, and GET /v1/nodenet shows it. GET /v1/status
answers too, so patronus status --socket works against this socket (block, routes,
lost pods, mesh).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMesh(cmd.Context(), e, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.node, "node-name", "", "node name (default $NODE_NAME, else the hostname)")
	fl.StringVar(&f.cluster, "cluster-id", "", "cluster id (default $CLUSTER_ID)")
	fl.StringVar(&f.clusterKey, "cluster-key", "", "file with the cluster signing key (base64 Ed25519 seed)")
	fl.StringVar(&f.gossipKey, "gossip-key", "", "gossip keyring file: one base64 key or serf's JSON list (rotations are written back); empty: no encryption")
	fl.StringVar(&f.remotes, "remote-clusters", "", "YAML file: list of {id, endpoint, cidr, gossip, publicKey}")
	fl.StringVar(&f.clusterCIDR, "cluster-cidr", "", "this cluster's pod CIDR(s), comma-separated: what its nodes may announce")
	fl.StringVar(&f.serviceCIDR, "service-cidr", "", "this cluster's service CIDR(s)")
	fl.StringArrayVar(&f.announce, "announce", nil, "prefix this node announces (repeatable)")
	fl.StringArrayVar(&f.joins, "join", nil, "gossip address host:port to join (repeatable)")
	fl.StringVar(&f.bind, "bind", "0.0.0.0:"+strconv.Itoa(mesh.DefaultGossipPort), "gossip bind address")
	fl.StringVar(&f.advertise, "advertise", "", "gossip address announced to peers (default: chosen from the bind address)")
	fl.StringVar(&f.group, "multicast-group", "239.255.77.77:7947", "beacon multicast group:port")
	fl.StringArrayVar(&f.ifaces, "multicast-iface", nil, "interface to beacon on (repeatable; default every multicast interface)")
	fl.DurationVar(&f.beaconEvery, "beacon-interval", 5*time.Second, "time between beacons")
	fl.BoolVar(&f.noBeacons, "no-beacons", false, "disable multicast discovery")
	fl.StringArrayVar(&f.handlers, "event-handler", nil, "[filter[,filter]=]script run on events, like serf (repeatable)")
	fl.StringVar(&f.socket, "socket", localapi.DefaultSocket, "local API unix socket")
	fl.StringVar(&f.db, "database", "", "node database to persist the mesh state in (default: none)")
	fl.StringVar(&f.role, "role", "gateway", "role tag")
	fl.StringVar(&f.wgKey, "wireguard-key", "", "WireGuard public key tag")
	fl.StringArrayVar(&f.endpoints, "endpoint", nil, "underlay endpoint host:port tag (repeatable)")
	fl.StringVar(&f.profile, "profile", "lan", "gossip timing: lan, or local (fast failure detection)")
	fl.DurationVar(&f.refresh, "refresh", 30*time.Second, "re-broadcast interval of own announcements")
	fl.DurationVar(&f.ttl, "ttl", 0, "lifetime of own announcements (default 3x --refresh)")
	fl.DurationVar(&f.reconnect, "reconnect-interval", 10*time.Second, "retry interval for failed members")
	fl.DurationVar(&f.certValidity, "cert-validity", 30*24*time.Hour, "validity of the node certificate issued at start")
	fl.BoolVar(&f.podNetwork, "pod-network", false, "edge-mode pod networking: claim this node's pod block of --cluster-cidr through the mesh (kept in --database), write --cni-conflist for it, route the other nodes' blocks, masquerade; status on /v1/nodenet")
	fl.StringVar(&f.nodeIP, "node-ip", "", "with --pod-network: this node's underlay address, the next hop of its block on the other nodes (default: the --advertise host, else the --bind host)")
	fl.IntVar(&f.blockSize, "node-block-size", nodenet.DefaultBlockSize, "with --pod-network: prefix length of the node's pod block in --cluster-cidr")
	fl.StringVar(&f.confList, "cni-conflist", nodenet.DefaultConfListPath, "with --pod-network: the CNI conflist written for the node's block")
	fl.BoolVar(&f.masquerade, "masquerade", true, "with --pod-network: masquerade pod traffic leaving --cluster-cidr to the node address")
	fl.StringVar(&f.nodeEncryption, "node-encryption", nodenet.EncryptionNone, "with --pod-network: node-to-node encryption, wireguard or none (WireGuard device ptw0 on UDP 51819, key in --database, public key in the signed block claim)")
	fl.DurationVar(&f.nodeKeyRotation, "node-encryption-key-rotation", 0, "with --node-encryption wireguard: rotate the node key this often (at least 1m; 0: only on demand, patronus keys rotate --node)")
	fl.BoolVar(&f.nodeEncryptionStrict, "node-encryption-strict", false, "with --node-encryption wireguard: drop this node's pod traffic to other nodes' pods that would leave unencrypted instead of sending it in the clear")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

func runMesh(ctx context.Context, e env, f meshRunFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	log, err := newLogger(e, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	if f.node == "" {
		f.node = e.getenv("NODE_NAME")
	}
	if f.node == "" {
		f.node, _ = os.Hostname()
	}
	if f.cluster == "" {
		f.cluster = e.getenv("CLUSTER_ID")
	}
	if f.cluster == "" || f.clusterKey == "" {
		return usagef("--cluster-id (or $CLUSTER_ID) and --cluster-key are required")
	}
	clusterCIDRs, err := mesh.ParsePrefixes(f.clusterCIDR)
	if err != nil {
		return usagef("--cluster-cidr: %v", err)
	}
	serviceCIDRs, err := mesh.ParsePrefixes(f.serviceCIDR)
	if err != nil {
		return usagef("--service-cidr: %v", err)
	}
	localCIDRs := slices.Concat(clusterCIDRs, serviceCIDRs)
	// Before any key file is read: a usage error names its flag at once.
	var edge *nodenet.EdgeOptions
	if f.podNetwork {
		if edge, err = edgeOptions(f, clusterCIDRs); err != nil {
			return err
		}
	}
	var remotes []config.RemoteCluster
	if f.remotes != "" {
		b, err := os.ReadFile(f.remotes)
		if err != nil {
			return fmt.Errorf("read --remote-clusters: %w", err)
		}
		// The ConfigMap's parser: the file has the remote-clusters key's format exactly.
		var local netip.Prefix
		if len(localCIDRs) > 0 {
			local = localCIDRs[0]
		}
		if remotes, err = config.ParseRemoteClusters(string(b), f.cluster, local, "--remote-clusters "+f.remotes); err != nil {
			return usagef("%v", err)
		}
	}
	tr, err := mesh.BuildTrust(ctx, mesh.TrustConfig{ClusterID: f.cluster, NodeName: f.node,
		Keys:       trust.FileSource{ClusterKeyFile: f.clusterKey, GossipKeyFile: f.gossipKey},
		LocalCIDRs: localCIDRs, Remotes: remotes, CertValidity: f.certValidity})
	if err != nil {
		return err
	}
	seeds := append(append([]string(nil), f.joins...), tr.Seeds...)
	announced, err := mesh.ParsePrefixes(joinArgs(f.announce))
	if err != nil {
		return usagef("--announce: %v", err)
	}
	var handlers []mesh.EventHandler
	for _, s := range f.handlers {
		h, err := mesh.ParseEventHandler(s)
		if err != nil {
			return usagef("%v", err)
		}
		handlers = append(handlers, h)
	}
	bindHost, bindPort, err := splitHostPortDefault(f.bind, mesh.DefaultGossipPort)
	if err != nil {
		return usagef("--bind: %v", err)
	}
	var advHost string
	var advPort int
	if f.advertise != "" {
		if advHost, advPort, err = splitHostPortDefault(f.advertise, bindPort); err != nil {
			return usagef("--advertise: %v", err)
		}
	}
	group, err := netip.ParseAddrPort(f.group)
	if err != nil {
		return usagef("--multicast-group: %v", err)
	}
	reg := prometheus.NewRegistry()
	var kv mesh.KV
	var db *store.DB
	if f.db != "" {
		if db, err = store.Open(ctx, f.db); err != nil {
			return err
		}
		defer db.Close()
		kv = db
	}
	pods := append([]netip.Prefix(nil), announced...)
	opts := mesh.Options{
		NodeName: f.node, ClusterID: f.cluster, Identity: tr.Identity, Verifier: tr.Verifier,
		BindAddr: bindHost, BindPort: bindPort, AdvertiseAddr: advHost, AdvertisePort: advPort,
		GossipKeys: tr.GossipKeys, Seeds: seeds,
		Tags:           mesh.Tags{Role: f.role, PodCIDRs: pods, WireGuardKey: f.wgKey, Endpoints: f.endpoints, Version: Version},
		DisableBeacons: f.noBeacons, BeaconGroup: group, BeaconInterfaces: f.ifaces, BeaconInterval: f.beaconEvery,
		Prefixes: announced, Refresh: f.refresh, TTL: f.ttl, Profile: f.profile, ReconnectInterval: f.reconnect,
		EventHandlers: handlers, Store: kv, Logger: log, Registerer: reg,
	}
	if f.gossipKey != "" && tr.GossipKeys != nil {
		opts.KeyringFile = f.gossipKey
	}
	node, err := mesh.New(opts)
	if err != nil {
		return err
	}
	var ctrl *nodenet.EdgeController
	if edge != nil {
		edge.DB, edge.Logger = db, log
		if ctrl, err = nodenet.NewEdge(nodenet.MeshEdge(*edge, node, f.cluster)); err != nil {
			node.Shutdown()
			return err
		}
	}
	ln, err := listenSocket(f.socket)
	if err != nil {
		node.Shutdown()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", node.HTTPHandler())
	// "GET /v1/status" and "GET /v1/nodenet" are more specific than "/v1/" (method and
	// path), so they win: `patronus status` works against this socket.
	mux.Handle("GET "+localapi.PathStatus, &edgeStatus{node: f.node, cluster: f.cluster, database: f.db,
		started: time.Now(), mesh: node, ctrl: ctrl, db: db})
	if ctrl != nil {
		mux.Handle(nodenet.StatusPath, ctrl.HTTPHandler())
		mux.Handle("POST "+nodenet.RotatePath, ctrl.RotateHandler())
		if err := errors.Join(reg.Register(nodenet.LostPodsGauge(ctrl.Status)), reg.Register(nodenet.StrictDroppedCounter(ctrl.Status))); err != nil {
			node.Shutdown()
			ln.Close()
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	defer os.Remove(f.socket)

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("mesh agent running", "node", f.node, "cluster", f.cluster, "bind", f.bind, "socket", f.socket,
		"public_key", trust.EncodeKey(tr.ClusterPublicKey), "seeds", seeds)
	if ctrl == nil {
		return node.Run(ctx)
	}
	log.Info("edge pod networking", "node_ip", edge.NodeIP, "cluster_cidr", edge.ClusterCIDR,
		"block_size", edge.BlockSize, "conflist", edge.ConfListPath, "masquerade", !edge.NoMasquerade, "node_encryption", edge.Encrypt.Mode, "node_encryption_strict", edge.Encrypt.Strict)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return node.Run(gctx) })
	g.Go(func() error { return ctrl.Run(gctx) })
	return g.Wait()
}

// edgeOptions checks the --pod-network flags (usage errors name the flag; cidrs is
// --cluster-cidr parsed) and returns the controller's options without DB, Members and
// Publish (set once they exist).
func edgeOptions(f meshRunFlags, cidrs []netip.Prefix) (*nodenet.EdgeOptions, error) {
	if len(cidrs) == 0 {
		return nil, usagef("--pod-network needs --cluster-cidr (the pod blocks are claimed out of it)")
	}
	cidr := cidrs[0] // the first is the pod CIDR, as in the ConfigMap's cluster-cidr
	if !cidr.Addr().Is4() {
		return nil, usagef("--cluster-cidr: pod blocks are IPv4, got %s", cidr)
	}
	if f.db == "" {
		return nil, usagef("--pod-network needs --database (the node's block claim is kept there across restarts)")
	}
	if err := alloc.Validate(cidr, f.blockSize); err != nil {
		return nil, usagef("--node-block-size %d: %v", f.blockSize, err)
	}
	if f.confList == "" {
		return nil, usagef("--cni-conflist: empty path")
	}
	ipFlag, ipStr := "--node-ip", f.nodeIP
	if ipStr == "" {
		ipFlag = "--advertise"
		ipStr, _, _ = splitHostPortDefault(f.advertise, 0)
		if ipStr == "" {
			ipFlag = "--bind"
			ipStr, _, _ = splitHostPortDefault(f.bind, 0)
		}
	}
	ip, err := netip.ParseAddr(ipStr)
	if err != nil || !ip.Is4() || ip.IsUnspecified() {
		return nil, usagef("--pod-network needs this node's IPv4 underlay address: --node-ip (or an --advertise address); %s %q is not one", ipFlag, ipStr)
	}
	enc, err := config.ParseNodeEncryption(f.nodeEncryption)
	if err != nil {
		return nil, usagef("--node-encryption %v", err)
	}
	if f.nodeEncryptionStrict && enc != nodenet.EncryptionWireGuard {
		return nil, usagef("--node-encryption-strict needs --node-encryption %s", nodenet.EncryptionWireGuard)
	}
	if f.nodeKeyRotation < 0 || f.nodeKeyRotation > 0 && f.nodeKeyRotation < nodenet.MinKeyRotation {
		return nil, usagef("--node-encryption-key-rotation %s: want 0 (off) or at least %s", f.nodeKeyRotation, nodenet.MinKeyRotation)
	}
	return &nodenet.EdgeOptions{NodeName: f.node, NodeIP: ip, ClusterCIDR: cidr, BlockSize: f.blockSize,
		ConfListPath: f.confList, NoMasquerade: !f.masquerade, Encrypt: nodenet.Encrypt{Mode: enc, Strict: f.nodeEncryptionStrict, KeyRotation: f.nodeKeyRotation}}, nil
}

func joinArgs(ss []string) string {
	out := ""
	for _, s := range ss {
		out += s + ","
	}
	return out
}

func splitHostPortDefault(s string, def int) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s, def, nil // a bare host takes the default port
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q", port)
	}
	return host, p, nil
}

// listenSocket listens on a unix socket (0600), replacing a stale socket file.
func listenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another agent is listening there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}
