package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/store"
	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// agent is one run of the daemon. Fields set before the informers start are read-only
// afterwards; the rest is guarded as noted.
type agent struct {
	opts    Options
	log     *slog.Logger
	db      *store.DB
	clients *kube.Clients
	metrics *metrics
	started time.Time

	// cfg is set once the configuration is loaded; readers go through config().
	cfgMu sync.RWMutex
	cfg   *config.Config

	baseInput     config.Input // the configuration sources except the ConfigMap, as read at start
	configWarning atomic.Value // string: why the ConfigMap differs from the running configuration

	ready     atomic.Bool
	notReady  atomic.Value // string: why /readyz fails
	mcsUp     atomic.Bool
	metricsAt atomic.Value // string: the metrics listener's address

	podLister corelisters.PodLister
	pods      *kube.Controller
	rows      rowIndex // the database's pod rows as of the last scan
	recorder  *kube.Recorder
	qosEvents eventDedup

	// steering: this gateway steers pods per QoS class (set by startPaths, before the
	// informers); clusterPods then lists every pod of the cluster (nil until set up).
	steering    atomic.Bool
	clusterPods atomic.Pointer[corelisters.PodLister]

	seen map[string]*seenSet // per kind: keys present in the API

	policy atomic.Pointer[policyController] // set once its caches synced (nil: enforcement off)

	meshNode    atomic.Pointer[mesh.Node]     // the running mesh node (mesh.go), nil when not running
	meshErr     atomic.Value                  // string: why the mesh is not running
	meshSkipped atomic.Value                  // string: why this node is not a gateway
	tunnel      tunnelState                   // WireGuard tunnel dataplane (tunnel.go)
	pathsSvc    atomic.Pointer[probe.Service] // the running path monitor (paths.go)
	nodeNet     nodeNetState                  // per-node pod networking (nodenet.go)
	mcs         mcsState                      // Multi-Cluster Services controller (mcs.go)
}

// Run runs the agent until ctx is cancelled (SIGTERM) or a fatal error: an invalid
// configuration, an unusable database, or a socket already served by another agent.
// Losing the API server is not fatal: informers reconnect and catch up.
func Run(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return err
	}
	a := &agent{opts: opts, log: opts.Logger, started: time.Now(), seen: newSeenSets()}
	a.notReady.Store("starting")
	a.metricsAt.Store("")

	restCfg := opts.RESTConfig
	if restCfg == nil {
		var err error
		if restCfg, err = kube.RESTConfig(opts.Kubeconfig); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	clients, err := kube.NewClients(restCfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.clients = clients

	db, err := store.Open(ctx, opts.DatabasePath)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer db.Close()
	a.db = db

	a.metrics, err = newMetrics(opts.Registry)
	if err != nil {
		return fmt.Errorf("agent: register metrics: %w", err)
	}
	defer a.metrics.unregister()
	if err := a.metrics.add(a.lostPodsGauge()); err != nil {
		return fmt.Errorf("agent: register metrics: %w", err)
	}
	if err := a.metrics.add(a.strictDroppedCounter()); err != nil {
		return fmt.Errorf("agent: register metrics: %w", err)
	}

	apiMux, err := a.apiMux()
	if err != nil {
		return err
	}

	// Listen before talking to the API server: /healthz answers at once and /readyz says
	// why it is not ready yet, which is what an operator needs during an API outage.
	sockLn, err := listenUnix(opts.SocketPath)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	var metricsLn net.Listener
	if opts.MetricsAddr != "off" {
		metricsLn, err = net.Listen("tcp", opts.MetricsAddr)
		if err != nil {
			sockLn.Close()
			return fmt.Errorf("agent: metrics listener on %s (--metrics-addr): %w", opts.MetricsAddr, err)
		}
		a.metricsAt.Store(metricsLn.Addr().String())
	}
	a.log.Info("agent starting", "node", opts.NodeName, "socket", opts.SocketPath, "database", opts.DatabasePath,
		"metrics", a.metricsAt.Load(), "apiServer", restCfg.Host)

	g, gctx := errgroup.WithContext(ctx)
	serve(g, gctx, a.log, "local API", &http.Server{Handler: apiMux, ReadHeaderTimeout: 5 * time.Second}, sockLn)
	if metricsLn != nil {
		serve(g, gctx, a.log, "metrics", &http.Server{Handler: a.metricsMux(), ReadHeaderTimeout: 5 * time.Second}, metricsLn)
	}
	g.Go(func() error { return a.runKube(gctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	if err != nil {
		a.log.Error("agent stopped", "err", err)
	} else {
		a.log.Info("agent stopped")
	}
	return err
}

// serve runs srv on ln in g and shuts it down when ctx ends.
func serve(g *errgroup.Group, ctx context.Context, log *slog.Logger, name string, srv *http.Server, ln net.Listener) {
	g.Go(func() error {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("agent: %s server on %s: %w", name, ln.Addr(), err)
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("server shutdown", "server", name, "err", err)
		}
		return nil
	})
}

// listenUnix listens on the socket at path: its directory 0700 and the socket 0600, root
// only, because the API can reveal every pod on the node. A stale socket from a killed
// agent is removed; a live one means another agent runs, which is an error.
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory %s (--socket): %w", dir, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s (--socket) exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s (--socket): another agent is already listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (--socket): %w", path, err)
	}
	// The directory is 0700, so the window before chmod exposes nothing.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

func (a *agent) config() *config.Config {
	a.cfgMu.RLock()
	defer a.cfgMu.RUnlock()
	return a.cfg
}

// runKube loads the configuration, starts the informers, waits for their caches and runs
// the controllers until ctx ends.
func (a *agent) runKube(ctx context.Context) error {
	a.notReady.Store("loading configuration from the API server")
	cfg, err := a.loadConfig(ctx)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		a.log.Warn("configuration", "warning", w)
	}
	a.cfgMu.Lock()
	a.cfg = &cfg
	a.cfgMu.Unlock()
	a.log.Info("configuration loaded", "clusterID", cfg.ClusterID, "clusterIDSource", cfg.ClusterIDSource,
		"bridge", cfg.Bridge, "defaultQoSClass", cfg.DefaultQoSClass, "remoteClusters", len(cfg.RemoteClusters))
	// The mesh and the path monitor need only the configuration, not the caches.
	var gw sync.WaitGroup
	gctx, stopGateway := context.WithCancel(ctx)
	defer gw.Wait()
	defer stopGateway() // before the Wait: an early return must not wait for ctx
	a.startMesh(gctx, &cfg, &gw)
	a.startPaths(gctx, &cfg, &gw)
	a.startNodeNet(gctx, &cfg, &gw)
	a.startMCS(gctx, &cfg, &gw) // after startMesh: the controller needs the mesh node
	if cfg.Database != "" && cfg.Database != a.opts.DatabasePath {
		a.log.Warn("the conflist's sdwan.database differs from the agent's database: pods the plugin registers will not be seen",
			"conflist", cfg.Database, "agent", a.opts.DatabasePath)
	}

	k := a.clients.Kube
	a.recorder = kube.NewRecorder(ctx, k, "patronus-agent", a.opts.NodeName, a.log)
	defer a.recorder.Stop()

	resync := a.opts.ResyncPeriod
	shared := kclient.NewFactory(k, nil, kclient.FactoryOptions{Resync: resync, Transform: kube.StripManagedFields})
	// Only this node's pods: the field selector keeps the watch (and memory) per node.
	nodePods := kclient.NewFactory(k, nil, kclient.FactoryOptions{Resync: resync, Transform: kube.StripManagedFields,
		Tweak: func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.opts.NodeName).String()
		}})

	podInf := nodePods.Pods()
	a.podLister = corelisters.NewPodLister(podInf.GetIndexer())
	a.pods = &kube.Controller{Name: "pods", Reconcile: a.reconcilePod, Workers: a.opts.Workers, Logger: a.log, OnResult: a.metrics.result}
	if _, err := podInf.AddEventHandler(a.pods.Handler()); err != nil {
		return fmt.Errorf("agent: pod informer: %w", err)
	}

	ctrls := []*kube.Controller{a.pods}
	synced := []cache.InformerSynced{podInf.HasSynced}
	// A gateway that steers pods per QoS class steers every pod of the cluster (the other
	// nodes route remote clusters through it): it reads all pods (agent/paths.go).
	if a.steering.Load() {
		inf := shared.Pods()
		l := corelisters.NewPodLister(inf.GetIndexer())
		a.clusterPods.Store(&l)
		synced = append(synced, inf.HasSynced)
	}
	watch := func(kind string, inf cache.SharedIndexInformer) error {
		c := a.observer(kind, inf.GetIndexer())
		if _, err := inf.AddEventHandler(c.Handler()); err != nil {
			return fmt.Errorf("agent: %s informer: %w", kind, err)
		}
		ctrls = append(ctrls, c)
		synced = append(synced, inf.HasSynced)
		return nil
	}
	for kind, inf := range map[string]cache.SharedIndexInformer{
		kindNamespaces:      shared.Namespaces(),
		kindNetworkPolicies: shared.NetworkPolicies(),
		kindServices:        shared.Services(),
		kindEndpointSlices:  shared.EndpointSlices(),
	} {
		if err := watch(kind, inf); err != nil {
			return err
		}
	}

	var pc *policyController
	if a.opts.Policy != nil {
		if pc, err = a.newPolicyController(&cfg, shared); err != nil {
			return err
		}
		defer pc.close()
		synced = append(synced, pc.synced...)
	}

	// The ConfigMap itself, by name only (the RBAC rules allow nothing broader): changes
	// are validated and reported; they apply on the next start.
	cmFactory := kclient.NewFactory(k, nil, kclient.FactoryOptions{Namespace: a.opts.ConfigNamespace, Resync: resync,
		Transform: kube.StripManagedFields,
		Tweak: func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", config.ConfigMapName).String()
		}})
	cmInf := cmFactory.ConfigMaps()
	cmLister := corelisters.NewConfigMapLister(cmInf.GetIndexer())
	cmCtrl := &kube.Controller{Name: "config", Workers: 1, Logger: a.log, OnResult: a.metrics.result,
		Reconcile: func(context.Context, string) error { a.checkConfig(cmLister); return nil }}
	if _, err := cmInf.AddEventHandler(cmCtrl.Handler()); err != nil {
		return fmt.Errorf("agent: ConfigMap informer: %w", err)
	}
	ctrls = append(ctrls, cmCtrl)
	synced = append(synced, cmInf.HasSynced)
	cmFactory.Start(ctx.Done())
	defer cmFactory.Shutdown()

	shared.Start(ctx.Done())
	nodePods.Start(ctx.Done())
	defer shared.Shutdown()
	defer nodePods.Shutdown()

	a.notReady.Store("waiting for the Kubernetes caches to sync")
	a.log.Info("waiting for caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	// One scan before the workers start: every registered pod is queued once.
	sc := newStoreScanner(a)
	sc.scan(ctx)
	a.ready.Store(true)
	a.metrics.ready.Set(1)
	a.log.Info("caches synced, agent ready")
	var wg sync.WaitGroup
	for _, c := range ctrls {
		wg.Go(func() { c.Run(ctx) })
	}
	wg.Go(func() { a.pollStore(ctx, sc) })
	wg.Go(func() { a.runMCS(ctx) })
	if pc != nil {
		a.policy.Store(pc)
		wg.Go(func() { pc.run(ctx) })
	}
	wg.Wait()
	return nil
}

// loadConfig reads the ConfigMap (retrying while the API server is unreachable or
// refuses) and the conflist, and validates them. Invalid configuration is returned at
// once: retrying cannot fix it, and the error names the key.
func (a *agent) loadConfig(ctx context.Context) (config.Config, error) {
	in := config.Input{ClusterIDEnv: a.opts.ClusterID, NodeName: a.opts.NodeName, ConflistPath: a.opts.ConflistPath,
		ConfigMapNamespace: a.opts.ConfigNamespace}
	if a.opts.NodeNet != nil {
		in.NodeEncryptionEnv = a.opts.NodeNet.Encryption
		in.NodeEncryptionStrictEnv = a.opts.NodeNet.EncryptionStrict
	}
	b, err := os.ReadFile(a.opts.ConflistPath)
	switch {
	case err == nil:
		in.Conflist = b
	case errors.Is(err, fs.ErrNotExist):
		a.log.Info("no CNI conflist yet; using defaults for the bridge and QoS class", "path", a.opts.ConflistPath)
	default:
		return config.Config{}, fmt.Errorf("agent: read conflist %s: %w", a.opts.ConflistPath, err)
	}

	delay := 500 * time.Millisecond
	for {
		cm, err := a.clients.Kube.ConfigMaps(a.opts.ConfigNamespace).Get(ctx, config.ConfigMapName, metav1.GetOptions{})
		if err == nil {
			in.ConfigMap = cm.Data
			if in.ConfigMap == nil {
				in.ConfigMap = map[string]string{}
			}
			break
		}
		if apierrors.IsNotFound(err) {
			a.log.Info("no ConfigMap; using the environment, the conflist and defaults",
				"configMap", a.opts.ConfigNamespace+"/"+config.ConfigMapName)
			break
		}
		a.log.Warn("cannot read the ConfigMap yet, retrying", "configMap", a.opts.ConfigNamespace+"/"+config.ConfigMapName,
			"retryIn", delay, "err", err)
		select {
		case <-ctx.Done():
			return config.Config{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
	base := in
	base.ConfigMap = nil
	a.baseInput = base
	cfg, err := config.Load(in)
	if err != nil {
		return config.Config{}, fmt.Errorf("agent: %w", err)
	}
	return cfg, nil
}

// checkConfig compares the ConfigMap as it is now with the configuration the agent runs
// with. A change is reported (log, metric, /v1/status), not applied: the cluster id and
// the CIDRs shape everything else, and an invalid edit must not take a running node down.
func (a *agent) checkConfig(l corelisters.ConfigMapLister) {
	in := a.baseInput
	cm, err := l.ConfigMaps(a.opts.ConfigNamespace).Get(config.ConfigMapName)
	if err == nil {
		in.ConfigMap = cm.Data
		if in.ConfigMap == nil {
			in.ConfigMap = map[string]string{}
		}
	}
	cfg, err := config.Load(in)
	cur := a.config()
	var warning string
	switch {
	case err != nil:
		warning = "the ConfigMap is now invalid (the agent keeps the configuration it started with): " + err.Error()
	case cur != nil && !sameConfig(cfg, *cur):
		warning = "the configuration changed since the agent started; restart the agent to apply it"
	}
	if old, _ := a.configWarning.Load().(string); old != warning {
		if warning != "" {
			a.log.Warn("configuration", "warning", warning)
		} else {
			a.log.Info("the ConfigMap matches the running configuration again")
		}
	}
	a.configWarning.Store(warning)
	if warning != "" {
		a.metrics.configStale.Set(1)
	} else {
		a.metrics.configStale.Set(0)
	}
}

func sameConfig(x, y config.Config) bool {
	x.Warnings, y.Warnings = nil, nil
	return reflect.DeepEqual(x, y)
}
