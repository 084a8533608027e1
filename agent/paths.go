package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/config"
	dqos "github.com/patronus/patronus/dataplane/qos"
	"github.com/patronus/patronus/dataplane/steer"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/qos"
)

// PathsOptions turn path monitoring on (Options.Paths; nil: off). It runs only when the
// configuration lists remote clusters with endpoints: those are the paths it probes.
type PathsOptions struct {
	// ResponderAddr is where this node answers probes ("" = ":7948", "off" = none).
	ResponderAddr string
	// MetricsSocket is the L7 metrics socket ("" = /var/run/patronus/metrics.sock,
	// "off" = none).
	MetricsSocket string
	// Port is the remote responders' port (0 = 7948).
	Port int
	// Devices maps a path id ("<cluster>/<host>") to the interface its traffic leaves by
	// (a per-path tunnel). With any, this node's pods are steered onto the path selected
	// for their QoS class (dataplane/steer); without, selection is only reported.
	Devices map[string]string
}

// ReasonNoPathMeetsMaxLatency is the reason of the Warning Event on a pod whose
// max-latency-ms no path to a remote cluster meets (it uses the fastest path).
const ReasonNoPathMeetsMaxLatency = "NoPathMeetsMaxLatency"

// podsRefresh is how often the path monitor re-reads this node's pods (requirements,
// steering, Events); selections and failovers are applied at every probe tick.
const podsRefresh = time.Second

// summaryEvery is how often a gateway announces its signed probe summary through the mesh
// (announcement kind probe), so the remote ends see its measurements.
const summaryEvery = 5 * time.Second

// pathsHandler serves GET /v1/paths from the running service, 503 until it runs.
type pathsHandler struct {
	svc *atomic.Pointer[probe.Service]
}

func (h pathsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.svc.Load()
	if s == nil {
		http.Error(w, "path monitoring is not running on this agent (no remote clusters with endpoints, or turned off)",
			http.StatusServiceUnavailable)
		return
	}
	s.Handler().ServeHTTP(w, r)
}

func (a *agent) pathsHandlers() []Handler {
	if a.opts.Paths == nil {
		return nil
	}
	return []Handler{{Pattern: probe.PathsAPIPath, Handler: pathsHandler{svc: &a.pathsSvc}}}
}

// startPaths probes every path to the configured remote clusters, in wg until ctx ends.
// Like the mesh, a failure is logged, not fatal.
func (a *agent) startPaths(ctx context.Context, cfg *config.Config, wg *sync.WaitGroup) {
	o := a.opts.Paths
	if o == nil {
		return
	}
	ps, err := probe.PathsFromConfig(cfg.RemoteClusters, o.Port)
	if err != nil {
		a.log.Error("path monitoring not started", "err", err)
		return
	}
	if len(ps) == 0 {
		a.log.Info("path monitoring idle: no remote clusters with endpoints")
		return
	}
	// Only gateways reach the remote endpoints; a node that routes remote clusters through
	// its gateway would probe paths it cannot use and report them all down.
	if a.opts.Mesh != nil {
		if gw, why := a.isGateway(ctx); !gw {
			a.log.Info("not a gateway node: path monitoring not started (the gateway probes the paths)", "reason", why)
			return
		}
	}
	reg := &trackingRegisterer{r: a.opts.Registry}
	log := a.log.With("component", "paths")
	pl := &podPaths{a: a, log: log, defClass: cfg.DefaultQoSClass, cluster: cfg.ClusterID, remotes: cfg.RemoteClusters}
	for _, p := range ps {
		if !slices.Contains(pl.dsts, p.Dst) {
			pl.dsts = append(pl.dsts, p.Dst)
		}
	}
	for i := range ps {
		if bw, ok := cfg.PathBandwidth[ps[i].ID]; ok {
			ps[i].BandwidthMbps = float64(bw)
		}
	}
	// The devices paths leave by: --path-device, else the gateway's own per-path tunnels
	// (agent/tunnel.go, opened before this when a remote cluster has several paths).
	devices, source := o.Devices, "--path-device"
	if len(devices) == 0 {
		devices, source = a.tunnel.pathDevices(), "per-path tunnels"
	}
	if len(devices) > 0 {
		for i := range ps {
			ps[i].Mark = steer.ProbeMark // their own class on shaped path devices
		}
		pl.steer = steer.New(steer.Options{Kernel: steer.Netlink{}, Devices: devices, Destinations: remoteCIDRs(cfg),
			QoS: qosKernel{}, DefaultClass: paths.Class(pl.defClass), Logger: log})
		// Own per-path tunnels are steered onto once they have a session (the remote end
		// may not run the matching device); with keepalive off an idle tunnel never
		// handshakes, so then every device is used at once.
		if len(o.Devices) == 0 && (a.opts.Tunnel == nil || a.opts.Tunnel.Keepalive >= 0) {
			pl.devices = devices
		}
		log.Info("steering pods per QoS class", "devices", devices, "from", source)
	}
	if dsts := remoteCIDRs(cfg); len(dsts) > 0 {
		m := steer.Meter{}
		if err := m.Program(dsts); err != nil {
			log.Warn("pod bandwidth meter not installed: patronus_pod_bandwidth_mbps is not exported", "err", err)
		} else {
			pl.meter = &m
			pl.bw = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "patronus_pod_bandwidth_mbps",
				Help: "Pod traffic this node forwards towards a remote cluster (its pods, and on a gateway the cluster's), Mbit/s over the last 5 s."},
				[]string{"src_cluster", "dst_cluster"})
			if err := reg.Register(pl.bw); err != nil {
				log.Warn("patronus_pod_bandwidth_mbps not registered", "err", err)
				pl.bw = nil
			}
		}
	}
	var svc *probe.Service
	svc, err = probe.NewService(probe.ServiceOptions{
		Prober: probe.Options{Paths: ps, Config: paths.Config{Interval: cfg.ProbeInterval},
			LocalCluster: cfg.ClusterID, Registerer: reg, Logger: log,
			AfterTick: func(now time.Time) { pl.tick(svc.Monitor(), now) }},
		ResponderAddr: o.ResponderAddr, MetricsSocket: o.MetricsSocket, Logger: log,
	})
	if err != nil {
		reg.unregisterAll()
		if pl.meter != nil {
			_ = pl.meter.Remove()
		}
		a.log.Error("path monitoring not started", "err", err)
		return
	}
	a.pathsSvc.Store(svc)
	a.steering.Store(pl.steer != nil)
	a.log.Info("path monitoring running", "paths", len(ps), "interval", cfg.ProbeInterval, "steering", pl.steer != nil)
	wg.Go(func() {
		defer reg.unregisterAll()
		if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("path monitoring stopped", "err", err)
		}
		a.pathsSvc.Store(nil)
		if pl.steer != nil {
			if err := pl.steer.Close(); err != nil {
				a.log.Warn("removing path steering", "err", err)
			}
		}
		if pl.meter != nil {
			if err := pl.meter.Remove(); err != nil {
				a.log.Warn("removing the pod bandwidth meter", "err", err)
			}
		}
	})
}

// podPaths joins the path monitor to this node's pods: their max-latency requirements,
// their steering and the Events on pods whose bound no path meets. It runs in the prober's
// goroutine (AfterTick).
type podPaths struct {
	a        *agent
	log      *slog.Logger
	defClass qos.Class
	cluster  string
	dsts     []string
	steer    *steer.Steerer // nil: no per-path devices, nothing to steer
	remotes  []config.RemoteCluster

	pods     []podReq
	readAt   time.Time
	reported map[string]bool // pod uid + dst: NoPathMeetsMaxLatency reported and still true
	lastErr  string

	announcedAt time.Time
	announceErr string
	down        string // remote clusters with every path down (downClusters), last seen

	// devices are the gateway's own per-path tunnels when steering onto them waits for a
	// session (usableDevices); nil otherwise. excluded are the path ids left out last.
	devices  map[string]string
	excluded string

	meter   *steer.Meter          // nil: not installed
	bw      *prometheus.GaugeVec  // patronus_pod_bandwidth_mbps
	samples map[string][]bwSample // per destination cluster, oldest first
}

type bwSample struct {
	at    time.Time
	bytes uint64
}

// bwWindow is the span patronus_pod_bandwidth_mbps averages over.
const bwWindow = 5 * time.Second

// remoteCIDRs lists each remote cluster's pod CIDR.
func remoteCIDRs(cfg *config.Config) map[string][]netip.Prefix {
	dsts := map[string][]netip.Prefix{}
	for _, r := range cfg.RemoteClusters {
		if r.CIDR.IsValid() && r.ID != cfg.ClusterID {
			dsts[r.ID] = append(dsts[r.ID], r.CIDR)
		}
	}
	return dsts
}

// addSample records counted bytes and returns the rate over the window in Mbit/s (false
// until two samples exist). A counter that went backwards (the chain was rewritten)
// restarts the window.
func addSample(ss []bwSample, s bwSample) ([]bwSample, float64, bool) {
	if n := len(ss); n > 0 && s.bytes < ss[n-1].bytes {
		ss = ss[:0]
	}
	ss = append(ss, s)
	for len(ss) > 2 && s.at.Sub(ss[1].at) >= bwWindow {
		ss = ss[1:]
	}
	if len(ss) < 2 {
		return ss, 0, false
	}
	dt := s.at.Sub(ss[0].at).Seconds()
	if dt <= 0 {
		return ss, 0, false
	}
	return ss, float64(s.bytes-ss[0].bytes) * 8 / dt / 1e6, true
}

// measure updates patronus_pod_bandwidth_mbps from the meter's counters.
func (p *podPaths) measure(now time.Time) {
	if p.meter == nil || p.bw == nil {
		return
	}
	counted, err := p.meter.Read()
	if err != nil {
		p.log.Debug("reading the pod bandwidth meter", "err", err)
		return
	}
	if p.samples == nil {
		p.samples = map[string][]bwSample{}
	}
	for dst, b := range counted {
		var mbps float64
		var ok bool
		p.samples[dst], mbps, ok = addSample(p.samples[dst], bwSample{now, b})
		if ok {
			p.bw.WithLabelValues(p.cluster, dst).Set(mbps)
		}
	}
}

type podReq struct {
	steer.PodClass
	ns, name string
	uid      types.UID
}

// readPods lists this node's pods with an IPv4 address from the database rows the agent
// keeps, with their effective QoS class and max-latency. Nothing before the agent is
// ready: the rows and the pod lister are set up by then.
func (p *podPaths) readPods() []podReq {
	if !p.a.ready.Load() {
		return nil
	}
	p.a.rows.mu.RLock()
	defer p.a.rows.mu.RUnlock()
	var out []podReq
	for _, rows := range p.a.rows.byKey {
		for _, r := range rows {
			spec, _ := qos.Parse(r.Annotations, p.defClass)
			for _, ip := range r.IPs {
				if !ip.Addr().Is4() {
					continue
				}
				out = append(out, podReq{PodClass: steer.PodClass{Name: r.Namespace + "/" + r.Name, IP: ip.Addr(),
					Class: paths.Class(spec.Class), MaxLatencyMs: float64(spec.MaxLatencyMs), MinBandwidthMbps: uint64(spec.MinBandwidthMbps)},
					ns: r.Namespace, name: r.Name, uid: types.UID(r.UID)})
				break
			}
		}
	}
	if l := p.a.clusterPods.Load(); l != nil {
		if all, err := (*l).List(labels.Everything()); err == nil {
			out = append(out, otherPods(all, out, p.defClass)...)
		}
	}
	slices.SortFunc(out, func(x, y podReq) int { return x.IP.Compare(y.IP) })
	return out
}

// otherPods are the pods of the cluster not already in have (this node's, from the
// database), by their status address: on a gateway that steers, the other nodes' pods
// are steered too (their traffic to remote clusters is routed through the gateway and
// marked on its forward path). Host-network pods (the node's address), finished pods and
// pods without an IPv4 address yet are left out.
func otherPods(all []*corev1.Pod, have []podReq, def qos.Class) []podReq {
	seen := map[netip.Addr]bool{}
	for _, r := range have {
		seen[r.IP] = true
	}
	var out []podReq
	for _, pod := range all {
		if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil {
			continue
		}
		ips := pod.Status.PodIPs
		if len(ips) == 0 && pod.Status.PodIP != "" {
			ips = []corev1.PodIP{{IP: pod.Status.PodIP}}
		}
		for _, s := range ips {
			ip, err := netip.ParseAddr(s.IP)
			if err != nil || !ip.Is4() {
				continue
			}
			if !seen[ip] {
				seen[ip] = true
				spec, _ := qos.Parse(pod.Annotations, def)
				out = append(out, podReq{PodClass: steer.PodClass{Name: pod.Namespace + "/" + pod.Name, IP: ip,
					Class: paths.Class(spec.Class), MaxLatencyMs: float64(spec.MaxLatencyMs), MinBandwidthMbps: uint64(spec.MinBandwidthMbps)},
					ns: pod.Namespace, name: pod.Name, uid: pod.UID})
			}
			break
		}
	}
	return out
}

func (p *podPaths) tick(m *paths.Monitor, now time.Time) {
	if now.Sub(p.readAt) >= podsRefresh {
		p.readAt = now
		p.pods = p.readPods()
		classes := make([]steer.PodClass, len(p.pods))
		for i, r := range p.pods {
			classes[i] = r.PodClass
		}
		m.SetRequirements(steer.Requirements(classes, p.dsts))
		if p.steer != nil {
			p.steer.SetPods(classes)
		}
		p.gateDevices(now)
		p.report(m)
		p.exchange(m, now)
		p.measure(now)
	}
	snap := m.Snapshot(now)
	if p.steer == nil {
		p.followTunnel(snap)
	}
	// A remote cluster whose paths all went down (or came back) changes the ClusterSetIP
	// endpoints (clusterReachable): re-sync the MCS datapath now, not at its next resync.
	if down := downClusters(snap); down != p.down {
		p.down = down
		if ds := p.a.mcs.ds.Load(); ds != nil {
			ds.Trigger()
		}
	}
	if p.steer != nil {
		_, err := p.steer.Update(snap)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != p.lastErr {
			if err != nil {
				p.log.Error("path steering", "err", err)
			} else {
				p.log.Info("path steering written")
			}
			p.lastErr = msg
		}
	}
}

// pathSessionMaxAge: a per-path tunnel whose last handshake is older is not steered onto.
// WireGuard rekeys 2 minutes into a session while packets flow (the persistent keepalive
// keeps them flowing) and rejects a session 3 minutes old: older means no session.
const pathSessionMaxAge = 3 * time.Minute

// usableDevices is devs without the per-path tunnels (the ids in handshakes, from
// tunnel.Reconciler.PathHandshakes) that have no session younger than pathSessionMaxAge.
// Paths of the main device are not in handshakes and always kept.
func usableDevices(devs map[string]string, handshakes map[string]time.Time, now time.Time) map[string]string {
	out := map[string]string{}
	for id, dev := range devs {
		at, perPath := handshakes[id]
		if !perPath || (!at.IsZero() && now.Sub(at) <= pathSessionMaxAge) {
			out[id] = dev
		}
	}
	return out
}

// gateDevices hands the steerer the own per-path tunnels that have a session.
func (p *podPaths) gateDevices(now time.Time) {
	if p.devices == nil || p.steer == nil {
		return
	}
	rec := p.a.tunnel.rec.Load()
	if rec == nil {
		return
	}
	use := usableDevices(p.devices, rec.PathHandshakes(), now)
	var out []string
	for id := range p.devices {
		if _, ok := use[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	if ex := strings.Join(out, ","); ex != p.excluded {
		p.excluded = ex
		if ex != "" {
			p.log.Warn("per-path tunnels without a WireGuard session are not steered onto (does the remote gateway run per-path tunnels?)", "paths", out)
		} else {
			p.log.Info("every per-path tunnel has a WireGuard session: all paths are steered onto")
		}
	}
	p.steer.SetDevices(use)
}

// followTunnel points each remote cluster's WireGuard peer at the path selected for the
// default QoS class, on a gateway without per-path devices: its single tunnel per remote
// cluster then follows the selection (best effort: every pod's traffic to that cluster
// takes the default class's path; per-class steering needs --path-device). Called every
// probe tick; the reconciler writes only an endpoint that changed. Each gateway follows
// its own selection, so the return direction moves too (WireGuard's roaming alone would
// be undone by the next reconcile writing the announced endpoint back).
func (p *podPaths) followTunnel(snap paths.Snapshot) {
	rec := p.a.tunnel.rec.Load()
	if rec == nil {
		return
	}
	// The steerer's default class (steer.Defaults) with one difference: no class
	// configured is best-effort here, not "no default", because the single tunnel per
	// remote cluster has to point at some path.
	def := cmp.Or(p.defClass, qos.DefaultClass)
	rec.SetPathEndpoints(tunnel.PathEndpoints(p.remotes, snap.Selected(paths.Class(def))))
}

// exchange announces this gateway's probe summary through the mesh every summaryEvery
// and hands the remote gateways' summaries about paths to this cluster to the monitor.
func (p *podPaths) exchange(m *paths.Monitor, now time.Time) {
	n := p.a.meshNode.Load()
	if n == nil {
		m.SetRemote(nil)
		return
	}
	p.exchangeWith(n.Announce, n.State().List, m, now)
}

func (p *podPaths) exchangeWith(announceFn func(announce.Announcement) error, list func() []announce.Announcement, m *paths.Monitor, now time.Time) {
	if now.Sub(p.announcedAt) >= summaryEvery {
		p.announcedAt = now
		var links []announce.Link
		for _, ps := range m.Snapshot(now).Paths {
			links = append(links, announce.Link{Peer: ps.Dst, Path: ps.ID, RTTMicros: uint32(ps.LatencyMs * 1e3),
				JitterMicros: uint32(ps.JitterMs * 1e3), LossPPM: uint32(ps.Loss * 1e6), BandwidthKbps: uint32(ps.BandwidthMbps * 1e3)})
		}
		msg := ""
		if len(links) > 0 {
			if err := announceFn(announce.Announcement{Kind: announce.KindProbe, Probe: &announce.Probe{Links: links}}); err != nil {
				msg = err.Error()
			}
		}
		if msg != p.announceErr {
			if msg != "" {
				p.log.Warn("probe summary not announced", "err", msg)
			}
			p.announceErr = msg
		}
	}
	var remote []paths.RemoteLink
	for _, a := range list() {
		if a.Kind != announce.KindProbe || a.Probe == nil || a.Withdraw || a.Cluster == p.cluster {
			continue
		}
		for _, l := range a.Probe.Links {
			if l.Peer != p.cluster {
				continue
			}
			remote = append(remote, paths.RemoteLink{Cluster: a.Cluster, Origin: a.Origin, PathID: l.Path,
				LatencyMs: float64(l.RTTMicros) / 1e3, JitterMs: float64(l.JitterMicros) / 1e3, Loss: float64(l.LossPPM) / 1e6,
				BandwidthMbps: float64(l.BandwidthKbps) / 1e3})
		}
	}
	slices.SortFunc(remote, func(x, y paths.RemoteLink) int {
		return cmp.Or(cmp.Compare(x.Cluster, y.Cluster), cmp.Compare(x.Origin, y.Origin), cmp.Compare(x.PathID, y.PathID))
	})
	m.SetRemote(remote)
}

// report emits a Warning Event on each pod whose max-latency no path meets, once per
// onset of the condition and destination.
func (p *podPaths) report(m *paths.Monitor) {
	if !p.a.ready.Load() || p.a.recorder == nil || p.a.podLister == nil {
		return // both are set before ready
	}
	seen := map[string]bool{}
	if p.reported == nil {
		p.reported = map[string]bool{}
	}
	for _, r := range p.pods {
		if r.MaxLatencyMs <= 0 {
			continue
		}
		for _, d := range p.dsts {
			req := paths.Requirement{Dst: d, Class: r.Class, MaxLatency: time.Duration(r.MaxLatencyMs * float64(time.Millisecond))}
			s, ok := m.Selection(req)
			if !ok || s.Condition != paths.CondNoPathMeetsMaxLatency {
				continue
			}
			k := string(r.uid) + "\x00" + d
			seen[k] = true
			if p.reported[k] {
				continue
			}
			pod, err := p.a.podLister.Pods(r.ns).Get(r.name)
			if l := p.a.clusterPods.Load(); err != nil && l != nil { // a pod of another node
				pod, err = (*l).Pods(r.ns).Get(r.name)
			}
			if err != nil || pod.UID != r.uid {
				continue
			}
			p.reported[k] = true
			msg := fmt.Sprintf("no path to cluster %s meets %s %d ms: using the fastest, %s", d, qos.AnnotationMaxLatency,
				int(r.MaxLatencyMs), s.PathID)
			for _, ps := range m.Snapshot(time.Now()).Paths {
				if ps.ID == s.PathID {
					msg += fmt.Sprintf(" (%.1f ms)", ps.LatencyMs)
				}
			}
			p.log.Warn("no path meets the pod's max latency", "pod", r.Name, "dst", d, "max_latency_ms", r.MaxLatencyMs, "path", s.PathID)
			p.a.recorder.Event(pod, corev1.EventTypeWarning, ReasonNoPathMeetsMaxLatency, msg)
		}
	}
	for k := range p.reported {
		if !seen[k] {
			delete(p.reported, k)
		}
	}
}

// qosKernel is dataplane/qos's netlink kernel in the agent's (node) namespace.
type qosKernel = dqos.Netlink
