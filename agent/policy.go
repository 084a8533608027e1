package agent

// The policy controller: NetworkPolicy enforcement on this node. It is level-based: any
// change of pods (cluster-wide, they are the peers), namespaces, NetworkPolicies or the
// node database's pod rows schedules one recompilation of the whole input (debounced a
// few milliseconds, so a burst of events costs one compile), whose endpoints for this
// node's pods are handed to the enforcer's Set. The enforcer diffs against the kernel,
// so an unchanged recompile writes nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/nft"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/policy"
	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
)

// Defaults of PolicyOptions.
const (
	DefaultBPFFS           = "/sys/fs/bpf"
	DefaultPolicyDebounce  = 5 * time.Millisecond
	DefaultCounterInterval = time.Second
	// AnnotationAudit on a namespace: "all" also reports allowed flows in the audit log.
	AnnotationAudit = "patronus.io/audit"
	// PolicyDefaultDeny is the policy label of patronus_policy_blocks_total for packets
	// dropped by isolation alone: the selecting policies have no rule in that direction.
	PolicyDefaultDeny = "default-deny"
)

// skb->priority per QoS class (TC_PRIO_* of linux/pkt_sched.h, which the default
// pfifo_fast/prio bands map): latency-sensitive is interactive (band 0), bulk is bulk
// (band 2), best-effort keeps the kernel's value (0, the best-effort band 1).
const (
	PriorityLatencySensitive uint32 = 6 // TC_PRIO_INTERACTIVE
	PriorityBulk             uint32 = 2 // TC_PRIO_BULK
	PriorityBestEffort       uint32 = 0 // unchanged
)

// QoSPriority is the skb->priority the datapath sets on a pod's packets.
func QoSPriority(c qos.Class) uint32 {
	switch c {
	case qos.LatencySensitive:
		return PriorityLatencySensitive
	case qos.Bulk:
		return PriorityBulk
	}
	return PriorityBestEffort
}

// PolicyOptions turn NetworkPolicy enforcement on (Options.Policy). Zero values take the
// defaults noted.
type PolicyOptions struct {
	// Datapath overrides the ConfigMap's `datapath` (ebpf, nftables or both; "" = the
	// ConfigMap's, default both).
	Datapath string
	// BPFFS is mounted as bpffs if it is not one (default /sys/fs/bpf).
	BPFFS string
	// PinDir holds the pinned programs, maps and links (default BPFFS/patronus).
	PinDir string
	// NetNS is the path of the node network namespace holding the host veths and the
	// nftables table ("" = the agent's own; tests pass a node netns).
	NetNS string
	// Uplinks are node interfaces where traffic of local pods leaves the node (see
	// enforce.Options).
	Uplinks []string
	// AuditLog is a file the audit lines are appended to besides AuditOut ("" = none).
	AuditLog string
	// AuditOut receives the audit JSON lines (default os.Stdout).
	AuditOut io.Writer
	// Debounce is how long a change waits for more before the recompile (default 5ms).
	Debounce time.Duration
	// CounterInterval is how often deny counters are exported (default 1s).
	CounterInterval time.Duration
	// OnSync, if set, is called after every enforcer Set with the endpoints applied and
	// Set's error (tests and benchmarks measure enforcement latency with it).
	OnSync func(endpoints []enforce.Endpoint, err error)
}

func (o PolicyOptions) withDefaults() PolicyOptions {
	if o.BPFFS == "" {
		o.BPFFS = DefaultBPFFS
	}
	if o.PinDir == "" {
		o.PinDir = filepath.Join(o.BPFFS, "patronus")
	}
	if o.AuditOut == nil {
		o.AuditOut = os.Stdout
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultPolicyDebounce
	}
	if o.CounterInterval <= 0 {
		o.CounterInterval = DefaultCounterInterval
	}
	return o
}

// policyController owns the enforcer. Fields above mu are set before run and read-only
// afterwards.
type policyController struct {
	a      *agent
	opts   PolicyOptions
	log    *slog.Logger
	mode   enforce.Mode
	enf    enforce.Enforcer
	ebpf   *enforce.EBPF
	nft    *nft.Enforcer
	pods   corelisters.PodLister // every pod of the cluster
	nss    corelisters.NamespaceLister
	nps    netlisters.NetworkPolicyLister
	synced []cache.InformerSynced

	blocks     *prometheus.CounterVec
	setSeconds prometheus.Histogram
	endpoints  prometheus.Gauge

	auditMu   sync.Mutex
	auditFile *os.File

	kick chan struct{}

	mu       sync.Mutex
	reqGen   uint64 // bumped by every change
	doneGen  uint64 // the reqGen the last completed Set covered
	doneErr  error
	doneCh   chan struct{}               // closed and replaced after every Set
	pending  map[string]pendingPod       // pods announced by the plugin, API object not in the informer yet
	applied  map[string]enforce.Endpoint // by key, as last passed to Set
	lastDeny map[string]uint64           // layer|key|dir → packets at the last export
	rowsFP   string                      // fingerprint of the rows the last compile used
	problems string                      // last compile problems, logged when they change
}

type pendingPod struct {
	pod *corev1.Pod
	req localapi.EndpointRequest
	at  time.Time
}

// newPolicyController creates the enforcer chosen by the configuration and registers the
// informers it needs on shared (cluster-wide pods, namespaces, NetworkPolicies).
func (a *agent) newPolicyController(cfg *config.Config, shared *kclient.Factory) (*policyController, error) {
	o := a.opts.Policy.withDefaults()
	dp := o.Datapath
	if dp == "" {
		dp = string(cfg.Datapath)
	}
	mode, err := enforce.ParseMode(dp)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	pc := &policyController{a: a, opts: o, log: a.log.With("component", "policy"), mode: mode,
		kick: make(chan struct{}, 1), doneCh: make(chan struct{}), pending: map[string]pendingPod{},
		applied: map[string]enforce.Endpoint{}, lastDeny: map[string]uint64{}}
	if err := pc.openEnforcers(cfg); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			pc.close()
		}
	}()
	if o.AuditLog != "" {
		if pc.auditFile, err = os.OpenFile(o.AuditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			return nil, fmt.Errorf("agent: audit log (--audit-log): %w", err)
		}
	}
	pc.blocks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "patronus_policy_blocks_total",
		Help: "Packets dropped by NetworkPolicy, by the isolated pod's namespace, the deciding policies (default-deny when they have no rule in that direction) and direction."},
		[]string{"namespace", "policy", "direction"})
	pc.setSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "patronus_policy_sync_seconds",
		Help:    "Time from a policy-relevant change to the enforcer's Set returning.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}})
	pc.endpoints = prometheus.NewGauge(prometheus.GaugeOpts{Name: "patronus_policy_endpoints",
		Help: "Pods of this node whose policy the datapath enforces."})
	for _, c := range []prometheus.Collector{pc.blocks, pc.setSeconds, pc.endpoints} {
		if err := a.opts.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("agent: register policy metrics: %w", err)
		}
	}

	podInf, nsInf, npInf := shared.Pods(), shared.Namespaces(), shared.NetworkPolicies()
	pc.pods = corelisters.NewPodLister(podInf.GetIndexer())
	pc.nss = corelisters.NewNamespaceLister(nsInf.GetIndexer())
	pc.nps = netlisters.NewNetworkPolicyLister(npInf.GetIndexer())
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { pc.changed() },
		UpdateFunc: func(any, any) { pc.changed() },
		DeleteFunc: func(any) { pc.changed() },
	}
	for _, inf := range []cache.SharedIndexInformer{podInf, nsInf, npInf} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, fmt.Errorf("agent: policy informer: %w", err)
		}
		pc.synced = append(pc.synced, inf.HasSynced)
	}
	ok = true
	pc.log.Info("NetworkPolicy enforcement on", "datapath", pc.mode, "ebpf", pc.ebpf != nil, "nftables", pc.nft != nil,
		"pinDir", o.PinDir, "netns", o.NetNS)
	return pc, nil
}

// openEnforcers opens the datapaths of the mode. In mode both, an eBPF datapath that
// cannot load leaves nftables enforcing alone (logged); a mode with one datapath fails.
func (pc *policyController) openEnforcers(cfg *config.Config) error {
	o := pc.opts
	var es []enforce.Enforcer
	if pc.mode.UsesEBPF() {
		var svc []netip.Prefix
		if cfg.ServiceCIDR.IsValid() {
			svc = append(svc, cfg.ServiceCIDR)
		}
		err := enforce.MountBPFFS(o.BPFFS)
		if err == nil {
			pc.ebpf, err = enforce.NewEBPF(enforce.Options{PinDir: o.PinDir, NetNS: o.NetNS, ServiceCIDRs: svc,
				Uplinks: o.Uplinks, RouteUplinks: true, Logger: pc.log})
		}
		switch {
		case err == nil:
			es = append(es, pc.ebpf)
		case pc.mode == enforce.ModeBoth:
			pc.log.Error("eBPF datapath unavailable, nftables enforces alone", "err", err)
		default:
			return fmt.Errorf("agent: eBPF datapath: %w", err)
		}
	}
	if pc.mode.UsesNftables() {
		// Bridged pod-to-pod traffic reaches the forward hook only with bridge netfilter.
		if err := pc.bridgeNetfilter(); err != nil {
			pc.log.Warn("cannot enable bridge netfilter: nftables does not see same-node pod traffic", "err", err)
		}
		// Its denials reach the audit log over NFLOG (readNftLog), and so do the allowed
		// new connections of audited namespaces when no eBPF datapath reports them (mode
		// nftables, or both with eBPF unavailable): one line per connection either way.
		n, err := nft.New(nft.Options{NetNS: o.NetNS, Logger: pc.log, LogGroup: nft.DefaultLogGroup, AuditAllowed: pc.ebpf == nil})
		if err != nil {
			if pc.ebpf != nil {
				pc.ebpf.Close()
			}
			return fmt.Errorf("agent: nftables datapath: %w", err)
		}
		pc.nft = n
		es = append(es, n)
	}
	if len(es) == 1 {
		pc.enf = es[0]
	} else {
		pc.enf = enforce.Multi(es...)
	}
	return nil
}

// bridgeNetfilter sets net.bridge.bridge-nf-call-ip(6)tables=1 in the node namespace.
func (pc *policyController) bridgeNetfilter() error {
	set := func() error {
		var errs []error
		for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
			errs = append(errs, os.WriteFile("/proc/sys/net/bridge/"+k, []byte("1"), 0o644))
		}
		return errors.Join(errs...)
	}
	if pc.opts.NetNS == "" {
		return set()
	}
	return ns.WithNetNSPath(pc.opts.NetNS, func(ns.NetNS) error { return set() })
}

// close releases the enforcers (enforcement stays in the kernel, pinned) and metrics.
func (pc *policyController) close() {
	if pc.enf != nil {
		if err := pc.enf.Close(); err != nil {
			pc.log.Warn("closing the enforcer", "err", err)
		}
	}
	for _, c := range []prometheus.Collector{pc.blocks, pc.setSeconds, pc.endpoints} {
		if c != nil {
			pc.a.opts.Registry.Unregister(c)
		}
	}
	if pc.auditFile != nil {
		pc.auditFile.Close()
	}
}

// changed schedules a recompile.
func (pc *policyController) changed() uint64 {
	pc.mu.Lock()
	pc.reqGen++
	g := pc.reqGen
	pc.mu.Unlock()
	select {
	case pc.kick <- struct{}{}:
	default:
	}
	return g
}

// wait blocks until a Set covering generation g completed and returns its error.
func (pc *policyController) wait(ctx context.Context, g uint64) error {
	for {
		pc.mu.Lock()
		if pc.doneGen >= g {
			err := pc.doneErr
			pc.mu.Unlock()
			return err
		}
		ch := pc.doneCh
		pc.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// run recompiles on every change until ctx ends. The caller has waited for the caches.
func (pc *policyController) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { pc.watchRows(ctx) })
	wg.Go(func() { pc.exportCounters(ctx) })
	if pc.ebpf != nil {
		wg.Go(func() { pc.readEvents(ctx) })
	}
	if pc.nft != nil {
		wg.Go(func() { pc.readNftLog(ctx) })
	}
	pc.changed()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-pc.kick:
		}
		start := time.Now()
		// Debounce: a relist or a burst of pod updates costs one compile.
		select {
		case <-time.After(pc.opts.Debounce):
		case <-ctx.Done():
			continue
		}
		pc.mu.Lock()
		g := pc.reqGen
		pc.mu.Unlock()
		err := pc.sync(ctx)
		pc.setSeconds.Observe(time.Since(start).Seconds())
		if err != nil && ctx.Err() == nil {
			pc.log.Warn("policy sync", "err", err)
		}
		pc.mu.Lock()
		pc.doneGen, pc.doneErr = g, err
		close(pc.doneCh)
		pc.doneCh = make(chan struct{})
		pc.mu.Unlock()
	}
}

// watchRows recompiles when the plugin added or removed pods in the database.
func (pc *policyController) watchRows(ctx context.Context) {
	t := time.NewTicker(pc.a.opts.StorePollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := pc.a.db.ListPods(ctx)
		if err != nil {
			continue
		}
		fp := rowsFingerprint(rows)
		pc.mu.Lock()
		same := fp == pc.rowsFP
		pc.mu.Unlock()
		if !same {
			pc.changed()
		}
	}
}

func rowsFingerprint(rows []store.Pod) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%s/%s/%s/%s/%s/%v|", r.ContainerID, r.IfName, r.Namespace, r.Name, r.HostVeth, r.IPs)
	}
	return b.String()
}

// sync compiles the current state and applies this node's endpoints.
func (pc *policyController) sync(ctx context.Context) error {
	rows, err := pc.a.db.ListPods(ctx)
	if err != nil {
		return fmt.Errorf("reading the node database: %w", err)
	}
	eps, err := pc.compute(rows)
	if err != nil {
		return err
	}
	setErr := pc.enf.Set(ctx, eps)
	pc.mu.Lock()
	pc.rowsFP = rowsFingerprint(rows)
	pc.applied = make(map[string]enforce.Endpoint, len(eps))
	for _, ep := range eps {
		pc.applied[ep.Key()] = ep
	}
	pc.mu.Unlock()
	pc.endpoints.Set(float64(len(eps)))
	if pc.opts.OnSync != nil {
		pc.opts.OnSync(eps, setErr)
	}
	return setErr
}

// compute builds the compiler's input from the informers, the database rows and the
// pods the plugin announced, and returns the endpoints of this node's attached pods.
func (pc *policyController) compute(rows []store.Pod) ([]enforce.Endpoint, error) {
	node := pc.a.opts.NodeName
	nps, err := pc.nps.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	nss, err := pc.nss.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	pods, err := pc.pods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	// One row per pod: the newest attachment (an older incarnation's row waits for its DEL).
	byKey := map[string]store.Pod{}
	inDB := map[string]bool{}
	for _, r := range rows {
		if r.Namespace == "" || r.Name == "" || r.HostVeth == "" {
			continue
		}
		k := r.Namespace + "/" + r.Name
		inDB[k] = true
		if old, ok := byKey[k]; !ok || r.CreatedAt.After(old.CreatedAt) {
			byKey[k] = r
		}
	}
	pc.mu.Lock()
	for k, p := range pc.pending {
		if time.Since(p.at) > 10*time.Minute {
			delete(pc.pending, k)
			continue
		}
		if _, ok := byKey[k]; !ok {
			byKey[k] = rowFromRequest(p.req)
		}
	}
	pending := make(map[string]*corev1.Pod, len(pc.pending))
	for k, p := range pc.pending {
		pending[k] = p.pod
	}
	pc.mu.Unlock()

	in := policy.Input{Policies: make([]networkingv1.NetworkPolicy, 0, len(nps)), Namespaces: make([]corev1.Namespace, 0, len(nss)),
		Pods: make([]corev1.Pod, 0, len(pods)+len(byKey))}
	for _, np := range nps {
		in.Policies = append(in.Policies, *np)
	}
	nsAnn := map[string]map[string]string{}
	for _, n := range nss {
		in.Namespaces = append(in.Namespaces, *n)
		nsAnn[n.Name] = n.Annotations
	}
	apiPods := map[string]*corev1.Pod{}
	var resolved []string // announced pods now known to the informer and the database
	for _, p := range pods {
		k := p.Namespace + "/" + p.Name
		if _, ok := pending[k]; ok {
			if inDB[k] {
				resolved = append(resolved, k)
			}
		}
		if _, ok := byKey[k]; ok && p.Spec.NodeName != node {
			// Attached here, so it runs here whatever the (not yet bound) object says.
			c := p.DeepCopy()
			c.Spec.NodeName = node
			p = c
		}
		apiPods[k] = p
		in.Pods = append(in.Pods, *p)
	}
	known := map[string][]netip.Addr{}
	for k, r := range byKey {
		for _, ip := range r.IPs {
			known[k] = append(known[k], ip.Addr())
		}
		if _, ok := apiPods[k]; ok {
			continue
		}
		// Registered by the plugin, API object not in the informer yet: the object the
		// sync handler fetched, else what the row says (labels once the agent matched it).
		p := pending[k]
		if p == nil {
			p = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: r.Name, Labels: r.Labels,
				Annotations: r.Annotations}}
		} else {
			p = p.DeepCopy()
		}
		p.Spec.NodeName = node
		p.Spec.HostNetwork = false
		if p.Status.Phase == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			p.Status.Phase = corev1.PodPending
		}
		apiPods[k] = p
		in.Pods = append(in.Pods, *p)
	}
	if len(resolved) > 0 {
		pc.mu.Lock()
		for _, k := range resolved {
			delete(pc.pending, k)
		}
		pc.mu.Unlock()
	}
	set, cerr := policy.Compile(in, policy.Options{Node: node, KnownIPs: known})
	if cerr != nil {
		msg := cerr.Error()
		pc.mu.Lock()
		changed := msg != pc.problems
		pc.problems = msg
		pc.mu.Unlock()
		if changed {
			pc.log.Warn("NetworkPolicy problems (compiled failing closed)", "err", msg)
		}
	}
	def := qos.DefaultClass
	if cfg := pc.a.config(); cfg != nil {
		def = cfg.DefaultQoSClass
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	eps := make([]enforce.Endpoint, 0, len(keys))
	for _, k := range keys {
		ep, ok := set.Endpoint(k)
		if !ok {
			continue // hostNetwork or finished
		}
		r := byKey[k]
		spec, _ := qos.Parse(apiPods[k].Annotations, def)
		eps = append(eps, enforce.Endpoint{EndpointPolicy: *ep, HostVeth: r.HostVeth, Priority: QoSPriority(spec.Class),
			AuditAllowed: nsAnn[r.Namespace][AnnotationAudit] == "all"})
	}
	return eps, nil
}

func rowFromRequest(req localapi.EndpointRequest) store.Pod {
	r := store.Pod{ContainerID: req.ContainerID, IfName: req.IfName, Namespace: req.Namespace, Name: req.Name,
		UID: req.UID, HostVeth: req.HostVeth, CreatedAt: time.Now()}
	for _, s := range req.IPs {
		if p, err := netip.ParsePrefix(s); err == nil {
			r.IPs = append(r.IPs, p)
		} else if a, err := netip.ParseAddr(s); err == nil {
			r.IPs = append(r.IPs, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return r
}

// syncEndpoint is CNI ADD's question: compile the pod in and return once the datapath
// enforces it. The Pod object is fetched from the API server by name, because the
// informer may not have it yet; without it (API server away, object not found) the pod
// is compiled with the labels the database has (none for a new pod): policies selecting
// all pods of its namespace isolate it at once, label-selecting ones once the object
// arrives.
func (pc *policyController) syncEndpoint(ctx context.Context, req localapi.EndpointRequest) (localapi.EndpointSyncResult, error) {
	key := req.Namespace + "/" + req.Name
	if _, err := pc.pods.Pods(req.Namespace).Get(req.Name); err != nil {
		gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		p, err := pc.a.clients.Kube.Pods(req.Namespace).Get(gctx, req.Name, metav1.GetOptions{})
		cancel()
		switch {
		case err == nil:
		case apierrors.IsNotFound(err):
			p = nil
		default:
			pc.log.Warn("cannot fetch the new pod's object; compiling it without labels", "pod", key, "err", err)
			p = nil
		}
		pc.mu.Lock()
		pc.pending[key] = pendingPod{pod: p, req: req, at: time.Now()}
		pc.mu.Unlock()
	} else {
		pc.mu.Lock()
		pc.pending[key] = pendingPod{req: req, at: time.Now()}
		pc.mu.Unlock()
	}
	g := pc.changed()
	err := pc.wait(ctx, g)
	res := localapi.EndpointSyncResult{Enforced: true}
	pc.mu.Lock()
	ep, ok := pc.applied[key]
	pc.mu.Unlock()
	if err != nil && (ctx.Err() != nil || strings.Contains(err.Error(), "endpoint "+key+":") || !ok) {
		return res, err
	}
	if !ok {
		return res, fmt.Errorf("pod %s is not an endpoint of this node (hostNetwork or finished?)", key)
	}
	if ep.HostVeth != req.HostVeth {
		return res, fmt.Errorf("pod %s: enforced on %s, not on the requested veth %s", key, ep.HostVeth, req.HostVeth)
	}
	res.IngressIsolated, res.EgressIsolated = ep.IngressIsolated, ep.EgressIsolated
	return res, nil
}

// removeEndpoint is CNI DEL's: the pod's enforcement state goes at once.
func (pc *policyController) removeEndpoint(ctx context.Context, req localapi.EndpointRequest) error {
	key := req.Namespace + "/" + req.Name
	pc.mu.Lock()
	ep, ok := pc.applied[key]
	delete(pc.pending, key)
	if ok && (req.HostVeth == "" || ep.HostVeth == req.HostVeth) {
		delete(pc.applied, key)
	} else {
		ok = false
	}
	pc.mu.Unlock()
	var err error
	if ok {
		err = pc.enf.Remove(ctx, ep)
	}
	pc.changed()
	return err
}

// policyLabel names the deciding policies of a denial for the metric.
func policyLabel(ep enforce.Endpoint, dir enforce.Direction) string {
	rules, pols := ep.Ingress, ep.IngressPolicies
	if dir == enforce.Egress {
		rules, pols = ep.Egress, ep.EgressPolicies
	}
	if len(rules) == 0 || len(pols) == 0 {
		return PolicyDefaultDeny
	}
	names := make([]string, 0, len(pols))
	for _, p := range pols {
		_, n, _ := strings.Cut(p, "/")
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(slices.Compact(names), ",")
}

// exportCounters adds the datapaths' new denials to patronus_policy_blocks_total.
func (pc *policyController) exportCounters(ctx context.Context) {
	t := time.NewTicker(pc.opts.CounterInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			pc.collectDenies() // the last interval's denials
			return
		case <-t.C:
		}
		pc.collectDenies()
	}
}

func (pc *policyController) collectDenies() {
	type count struct {
		ep      enforce.Endpoint
		dir     enforce.Direction
		packets uint64
	}
	var all []struct {
		layer string
		c     count
	}
	if pc.ebpf != nil {
		ds, err := pc.ebpf.Denies()
		if err != nil {
			pc.log.Warn("reading eBPF deny counters", "err", err)
		}
		for _, d := range ds {
			all = append(all, struct {
				layer string
				c     count
			}{"ebpf", count{d.Endpoint, d.Direction, d.Packets}})
		}
	}
	if pc.nft != nil {
		ds, err := pc.nft.Denies()
		if err != nil {
			pc.log.Warn("reading nftables deny counters", "err", err)
		}
		for _, d := range ds {
			all = append(all, struct {
				layer string
				c     count
			}{"nft", count{d.Endpoint, d.Direction, d.Packets}})
		}
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	seen := map[string]bool{}
	for _, x := range all {
		// The layers count different packets (nftables sees only what eBPF let through),
		// so their sum is the node's denials.
		k := x.layer + "|" + x.c.ep.Key() + "|" + x.c.ep.HostVeth + "|" + x.c.dir.String()
		seen[k] = true
		last, ok := pc.lastDeny[k]
		delta := x.c.packets
		if ok && x.c.packets >= last {
			delta = x.c.packets - last
		}
		pc.lastDeny[k] = x.c.packets
		if delta > 0 {
			pc.blocks.WithLabelValues(x.c.ep.Namespace, policyLabel(x.c.ep, x.c.dir), x.c.dir.String()).Add(float64(delta))
		}
	}
	// A removed endpoint's kernel counters are gone; a new one starts from zero.
	for k := range pc.lastDeny {
		if !seen[k] {
			delete(pc.lastDeny, k)
		}
	}
}

// readEvents writes the eBPF datapath's flow events as audit lines.
func (pc *policyController) readEvents(ctx context.Context) {
	rd, err := pc.ebpf.Events()
	if err != nil {
		pc.log.Error("cannot read policy events: no audit log", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	for {
		ev, err := rd.Read()
		if err != nil {
			if errors.Is(err, enforce.ErrClosed) || ctx.Err() != nil {
				return
			}
			pc.log.Warn("reading a policy event", "err", err)
			continue
		}
		pc.audit(ev.Audit())
	}
}

// readNftLog writes the nftables datapath's denials (NFLOG) as audit lines. In mode both
// these are the denials eBPF let through to netfilter: same-node ingress, which the
// forward hook drops before the destination veth's TC program sees the packet. Without
// eBPF it also carries the allowed new connections of audited namespaces.
func (pc *policyController) readNftLog(ctx context.Context) {
	rd, err := pc.nft.LogReader()
	if err != nil {
		pc.log.Error("cannot read nftables denials: no audit log for them", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	for {
		evs, err := rd.Read()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			pc.log.Warn("reading nftables denials", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for _, ev := range evs {
			pc.audit(ev.Audit())
		}
	}
}

func (pc *policyController) audit(rec enforce.AuditRecord) {
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	b = append(b, '\n')
	pc.auditMu.Lock()
	defer pc.auditMu.Unlock()
	_, _ = pc.opts.AuditOut.Write(b)
	if pc.auditFile != nil {
		_, _ = pc.auditFile.Write(b)
	}
}

// handleEndpointSync serves localapi.PathEndpointSync.
func (a *agent) handleEndpointSync(w http.ResponseWriter, r *http.Request) {
	var req localapi.EndpointRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if req.Namespace == "" || req.Name == "" || req.HostVeth == "" {
		http.Error(w, "bad request: namespace, name and hostVeth are required", http.StatusBadRequest)
		return
	}
	if a.opts.Policy == nil {
		writeJSON(w, localapi.EndpointSyncResult{Reason: "the agent runs without NetworkPolicy enforcement"})
		return
	}
	pc := a.waitPolicy(r.Context())
	if pc == nil {
		http.Error(w, "policy enforcement is starting (caches not synced yet)", http.StatusServiceUnavailable)
		return
	}
	res, err := pc.syncEndpoint(r.Context(), req)
	if err != nil {
		http.Error(w, "enforcing the pod's policy: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, res)
}

// handleEndpointRemove serves localapi.PathEndpointRemove.
func (a *agent) handleEndpointRemove(w http.ResponseWriter, r *http.Request) {
	var req localapi.EndpointRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if pc := a.policy.Load(); pc != nil {
		if err := pc.removeEndpoint(r.Context(), req); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// waitPolicy returns the running policy controller, waiting for it while the agent
// starts (nil if ctx ends first).
func (a *agent) waitPolicy(ctx context.Context) *policyController {
	for {
		if pc := a.policy.Load(); pc != nil {
			return pc
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}
