// Package mcs_test runs the Multi-Cluster Services controller (package mcs) against two
// real API servers (k8senv) whose controllers exchange exports through two real mesh nodes
// (serf on loopback, signed announcements, pinned cluster keys), and checks what a user of
// the MCS API sees: ServiceImports, imported EndpointSlices and ServiceExport conditions.
package mcs_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/mcs"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
)

const ns = "shop"

// site is one cluster: API server, mesh node, MCS controller.
type site struct {
	id    string
	cidr  netip.Prefix
	key   ed25519.PrivateKey
	k8s   *k8senv.Cluster
	kube  kubernetes.Interface
	mcs   mcsclient.Interface
	agent *kclient.Client // what the agent's packages take (the same cluster)
	addr  string
	node  *mesh.Node
	nodeC context.CancelFunc
	nodeD chan struct{}
	ctrl  *mcs.Controller
	ctrlC context.CancelFunc
	ctrlD chan struct{}
}

type env struct {
	t     *testing.T
	sites []*site
	peers func(s *site) []trust.Cluster
}

func logger(t *testing.T) *slog.Logger {
	if os.Getenv("PATRONUS_MCS_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newEnv(t *testing.T) *env {
	clusters := k8senv.StartN(t, 2, k8senv.WithMCSCRDs())
	base := fmt.Sprintf("127.%d.%d.", 10+rand.IntN(200), 1+rand.IntN(250))
	e := &env{t: t}
	for i, id := range []string{"east", "west"} {
		k, err := trust.GenerateClusterKey()
		if err != nil {
			t.Fatal(err)
		}
		s := &site{id: id, cidr: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 244+i)), key: k, k8s: clusters[i],
			kube: clusters[i].Client(), agent: clusters[i].AgentClient(), addr: fmt.Sprintf("%s%d", base, i+1)}
		s.mcs, err = mcsclient.NewForConfig(clusters[i].RESTConfig())
		if err != nil {
			t.Fatal(err)
		}
		e.sites = append(e.sites, s)
	}
	for _, s := range e.sites {
		must(s.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))(t)
		e.startNode(s)
		e.startController(s)
	}
	return e
}

// must fails the test on err: must(call())(t).
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func (e *env) verifier(s *site) *trust.Verifier {
	var remotes []trust.Cluster
	for _, o := range e.sites {
		if o != s {
			remotes = append(remotes, trust.Cluster{ID: o.id, PublicKey: o.key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{o.cidr}})
		}
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: s.id, PublicKey: s.key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{s.cidr}}, remotes...)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// startNode runs the site's mesh node (gateway of its cluster) on loopback, joined to the
// other sites' addresses, with fast failure detection (profile local). Announcements live
// 30s (Refresh 10s, so they expire 20-30s after a crash): a crashed cluster must leave the
// import side through serf's failure detection, well before that.
func (e *env) startNode(s *site) {
	t := e.t
	id, err := trust.NewIdentity(s.id, s.key, s.id+"-gw", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var seeds []string
	for _, o := range e.sites {
		if o != s {
			seeds = append(seeds, o.addr+":7946")
		}
	}
	n, err := mesh.New(mesh.Options{NodeName: s.id + "-gw", ClusterID: s.id, Identity: id, Verifier: e.verifier(s),
		BindAddr: s.addr, BindPort: 7946, Seeds: seeds, DisableBeacons: true, Profile: "local",
		Refresh: 10 * time.Second, TTL: 30 * time.Second, ReconnectInterval: time.Second, Logger: logger(t)})
	if err != nil {
		t.Fatalf("mesh node %s: %v", s.id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.node, s.nodeC, s.nodeD = n, cancel, make(chan struct{})
	go func() { defer close(s.nodeD); _ = n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-s.nodeD })
}

func (e *env) startController(s *site) {
	t := e.t
	c, err := mcs.New(mcs.Options{Kube: s.agent, MCS: s.agent, ClusterID: s.id, Identity: s.id + "-gw",
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Announcer: mcs.NewMeshAnnouncer(s.node), Reserved: []netip.Prefix{s.cidr, netip.MustParsePrefix("10.96.0.0/12")},
		Logger: logger(t).With("site", s.id)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.ctrl, s.ctrlC, s.ctrlD = c, cancel, make(chan struct{})
	go func() {
		defer close(s.ctrlD)
		if err := c.Run(ctx); err != nil {
			t.Errorf("controller %s: %v", s.id, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-s.ctrlD })
}

func (s *site) stopController() { s.ctrlC(); <-s.ctrlD }

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var bg = context.Background()

type port struct {
	name  string
	n     int32
	proto corev1.Protocol
}

func (s *site) service(t *testing.T, name string, headless bool, affinity corev1.ServiceAffinity, ports ...port) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, SessionAffinity: affinity}}
	if headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.name, Port: p.n, Protocol: p.proto, TargetPort: intstr.FromInt32(p.n)})
	}
	must(s.kube.CoreV1().Services(ns).Create(bg, svc, metav1.CreateOptions{}))(t)
}

// endpoints writes the Service's EndpointSlice as the EndpointSlice controller would (the
// test control plane runs no controller manager). ready maps address -> ready.
func (s *site) endpoints(t *testing.T, name string, ready map[string]bool, ports ...port) {
	t.Helper()
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde",
		Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4}
	for _, a := range slices.Sorted(mapsKeys(ready)) {
		r := ready[a]
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	for _, p := range ports {
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: &p.name, Port: &p.n, Protocol: &p.proto})
	}
	api := s.kube.DiscoveryV1().EndpointSlices(ns)
	cur, err := api.Get(bg, sl.Name, metav1.GetOptions{})
	if err == nil {
		sl.ResourceVersion = cur.ResourceVersion
		_, err = api.Update(bg, sl, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(bg, sl, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (s *site) export(t *testing.T, name string) {
	t.Helper()
	must(s.mcs.MulticlusterV1beta1().ServiceExports(ns).Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, metav1.CreateOptions{}))(t)
}

func (s *site) unexport(t *testing.T, name string) {
	t.Helper()
	if err := s.mcs.MulticlusterV1beta1().ServiceExports(ns).Delete(bg, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (s *site) imp(name string) (*mcsv1beta1.ServiceImport, error) {
	return s.mcs.MulticlusterV1beta1().ServiceImports(ns).Get(bg, name, metav1.GetOptions{})
}

// importedSlices returns the imported EndpointSlices of service name by source cluster.
func (s *site) importedSlices(name string) (map[string]discoveryv1.EndpointSlice, error) {
	l, err := s.kube.DiscoveryV1().EndpointSlices(ns).List(bg, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=" + name})
	if err != nil {
		return nil, err
	}
	out := map[string]discoveryv1.EndpointSlice{}
	for _, sl := range l.Items {
		out[sl.Labels[mcsv1beta1.LabelSourceCluster]] = sl
	}
	return out, nil
}

func (s *site) cond(name, typ string) (*metav1.Condition, error) {
	se, err := s.mcs.MulticlusterV1beta1().ServiceExports(ns).Get(bg, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	c := meta.FindStatusCondition(se.Status.Conditions, typ)
	if c == nil {
		return nil, fmt.Errorf("ServiceExport %s in %s has no %s condition (has %+v)", name, s.id, typ, se.Status.Conditions)
	}
	return c, nil
}

func wantCond(s *site, name, typ string, status metav1.ConditionStatus, reason string, msgSub ...string) func() error {
	return func() error {
		c, err := s.cond(name, typ)
		if err != nil {
			return err
		}
		if c.Status != status || c.Reason != reason {
			return fmt.Errorf("%s: %s=%s (%s: %s), want %s (%s)", s.id, typ, c.Status, c.Reason, c.Message, status, reason)
		}
		for _, m := range msgSub {
			if !strings.Contains(c.Message, m) {
				return fmt.Errorf("%s: %s message %q lacks %q", s.id, typ, c.Message, m)
			}
		}
		return nil
	}
}

// sliceAddrs is "addr(ready)" sorted, for comparisons.
func sliceAddrs(sl discoveryv1.EndpointSlice) string {
	var out []string
	for _, ep := range sl.Endpoints {
		r := ep.Conditions.Ready != nil && *ep.Conditions.Ready
		for _, a := range ep.Addresses {
			out = append(out, fmt.Sprintf("%s(%v)", a, r))
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func portsOf(si *mcsv1beta1.ServiceImport) string {
	var out []string
	for _, p := range si.Spec.Ports {
		out = append(out, fmt.Sprintf("%s=%d/%s", p.Name, p.Port, p.Protocol))
	}
	return strings.Join(out, ",")
}

func TestMultiClusterServices(t *testing.T) {
	e := newEnv(t)
	east, west := e.sites[0], e.sites[1]
	http := port{"http", 80, corev1.ProtocolTCP}

	// Both mesh nodes see each other before anything is exported.
	eventually(t, 20*time.Second, "mesh formed", func() error {
		for _, s := range e.sites {
			alive := 0
			for _, m := range s.node.Members() {
				if m.Status == "alive" {
					alive++
				}
			}
			if alive != 2 {
				return fmt.Errorf("%s sees %d alive members", s.id, alive)
			}
		}
		return nil
	})
	eventually(t, 15*time.Second, "each controller leads its cluster", func() error {
		for _, s := range e.sites {
			if !s.ctrl.Leading() {
				return fmt.Errorf("%s not leading", s.id)
			}
		}
		return nil
	})

	var vip string
	t.Run("export in west appears in east", func(t *testing.T) {
		west.service(t, "web", false, corev1.ServiceAffinityClientIP, http)
		// The pods listen on 8080 (a named targetPort the Service resolves through its slices).
		west.endpoints(t, "web", map[string]bool{"10.245.1.5": true, "10.245.1.6": false}, port{"http", 8080, corev1.ProtocolTCP})
		west.export(t, "web")
		took := eventually(t, 10*time.Second, "ServiceImport and EndpointSlice in east", func() error {
			si, err := east.imp("web")
			if err != nil {
				return err
			}
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			sl, ok := sls["west"]
			if !ok {
				return fmt.Errorf("no slice from west (have %v)", sls)
			}
			if got := sliceAddrs(sl); got != "10.245.1.5(true),10.245.1.6(false)" {
				return fmt.Errorf("west slice endpoints %s", got)
			}
			if len(sl.OwnerReferences) != 1 || sl.OwnerReferences[0].UID != si.UID || sl.OwnerReferences[0].Kind != "ServiceImport" {
				return fmt.Errorf("slice owner %+v, want ServiceImport %s", sl.OwnerReferences, si.UID)
			}
			if sl.Labels[discoveryv1.LabelManagedBy] != mcs.EndpointSliceManagedBy || len(sl.Ports) != 1 || *sl.Ports[0].Port != 8080 {
				return fmt.Errorf("slice labels/ports %v %v", sl.Labels, sl.Ports)
			}
			if si.Spec.Type != mcsv1beta1.ClusterSetIP || portsOf(si) != "http=80/TCP" || si.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
				return fmt.Errorf("import spec %+v", si.Spec)
			}
			if len(si.Spec.IPs) != 1 || !netip.MustParsePrefix("10.112.0.0/16").Contains(netip.MustParseAddr(si.Spec.IPs[0])) {
				return fmt.Errorf("import ips %v, want one in 10.112.0.0/16", si.Spec.IPs)
			}
			if len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != "west" {
				return fmt.Errorf("import clusters %v", si.Status.Clusters)
			}
			if c := meta.FindStatusCondition(si.Status.Conditions, "Ready"); c == nil || c.Status != metav1.ConditionTrue || c.Message != "imported from west" {
				return fmt.Errorf("import Ready condition %+v", c)
			}
			vip = si.Spec.IPs[0]
			return nil
		})
		t.Logf("export in west -> import in east: %s", took)
		eventually(t, 5*time.Second, "west export conditions", func() error {
			return errors.Join(
				wantCond(west, "web", "Valid", metav1.ConditionTrue, "Valid")(),
				wantCond(west, "web", "Ready", metav1.ConditionTrue, "Exported", "2 endpoints (1 ready)")(),
				wantCond(west, "web", "Conflict", metav1.ConditionFalse, "NoConflicts")())
		})
		// The exporting cluster imports too (same ClusterSetIP), without a slice of its own.
		eventually(t, 5*time.Second, "import in west with the same ClusterSetIP", func() error {
			si, err := west.imp("web")
			if err != nil {
				return err
			}
			if len(si.Spec.IPs) != 1 || si.Spec.IPs[0] != vip {
				return fmt.Errorf("west ips %v, east has %s", si.Spec.IPs, vip)
			}
			sls, err := west.importedSlices("web")
			if err != nil || len(sls) != 0 {
				return fmt.Errorf("west has imported slices %v (%v)", sls, err)
			}
			return nil
		})
		// A large export (more endpoints than fit in one gossip packet) arrives whole.
		many := map[string]bool{}
		for i := range 40 {
			many[fmt.Sprintf("10.245.2.%d", i+1)] = i%4 != 0
		}
		west.endpoints(t, "web", many, port{"http", 8080, corev1.ProtocolTCP})
		eventually(t, 10*time.Second, "40 endpoints reach east", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			sl := sls["west"]
			ready := 0
			for _, ep := range sl.Endpoints {
				if *ep.Conditions.Ready {
					ready++
				}
			}
			if len(sl.Endpoints) != 40 || ready != 30 {
				return fmt.Errorf("west slice has %d endpoints, %d ready", len(sl.Endpoints), ready)
			}
			return nil
		})
		// Endpoint changes follow.
		west.endpoints(t, "web", map[string]bool{"10.245.1.5": true, "10.245.1.6": true, "10.245.1.7": true}, port{"http", 8080, corev1.ProtocolTCP})
		eventually(t, 10*time.Second, "endpoint change reaches east", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			if got := sliceAddrs(sls["west"]); got != "10.245.1.5(true),10.245.1.6(true),10.245.1.7(true)" {
				return fmt.Errorf("west slice endpoints %s", got)
			}
			return nil
		})
	})

	t.Run("export from both clusters", func(t *testing.T) {
		east.service(t, "web", false, corev1.ServiceAffinityClientIP, http)
		east.endpoints(t, "web", map[string]bool{"10.244.2.7": true}, http)
		east.export(t, "web")
		eventually(t, 10*time.Second, "each cluster has the other's slice", func() error {
			var errs []error
			for _, c := range []struct {
				s      *site
				remote string
				addrs  string
			}{{east, "west", "10.245.1.5(true),10.245.1.6(true),10.245.1.7(true)"}, {west, "east", "10.244.2.7(true)"}} {
				sls, err := c.s.importedSlices("web")
				if err != nil {
					return err
				}
				if len(sls) != 1 || sliceAddrs(sls[c.remote]) != c.addrs {
					errs = append(errs, fmt.Errorf("%s: slices %v", c.s.id, sls))
				}
				si, err := c.s.imp("web")
				if err != nil {
					return err
				}
				if len(si.Status.Clusters) != 2 || si.Spec.IPs[0] != vip {
					errs = append(errs, fmt.Errorf("%s: clusters %v ips %v", c.s.id, si.Status.Clusters, si.Spec.IPs))
				}
			}
			return errors.Join(errs...)
		})
		for _, s := range e.sites {
			eventually(t, 5*time.Second, "no conflict", wantCond(s, "web", "Conflict", metav1.ConditionFalse, "NoConflicts", "east, west"))
		}
	})

	t.Run("conflicting type and ports", func(t *testing.T) {
		// west exports first (older): its type (headless) wins; ports are the union, the
		// clashing "pg" port is west's.
		west.service(t, "db", true, "", port{"pg", 5432, corev1.ProtocolTCP})
		west.endpoints(t, "db", map[string]bool{"10.245.3.1": true}, port{"pg", 5432, corev1.ProtocolTCP})
		west.export(t, "db")
		eventually(t, 10*time.Second, "db imported in east", func() error { _, err := east.imp("db"); return err })
		time.Sleep(1100 * time.Millisecond) // creation timestamps have second resolution
		east.service(t, "db", false, "", port{"pg", 5433, corev1.ProtocolTCP}, port{"metrics", 9187, corev1.ProtocolTCP})
		east.endpoints(t, "db", map[string]bool{"10.244.3.1": true}, port{"pg", 5433, corev1.ProtocolTCP}, port{"metrics", 9187, corev1.ProtocolTCP})
		east.export(t, "db")
		for _, s := range e.sites {
			eventually(t, 10*time.Second, "Conflict on "+s.id, wantCond(s, "db", "Conflict", metav1.ConditionTrue, "TypeConflict",
				"using Headless from the oldest export (cluster west)", `port "pg" is pg=5433/TCP in east but pg=5432/TCP in west (kept)`))
			eventually(t, 10*time.Second, "merged import in "+s.id, func() error {
				si, err := s.imp("db")
				if err != nil {
					return err
				}
				if si.Spec.Type != mcsv1beta1.Headless || len(si.Spec.IPs) != 0 || portsOf(si) != "pg=5432/TCP,metrics=9187/TCP" {
					return fmt.Errorf("%s: import %+v", s.id, si.Spec)
				}
				return nil
			})
		}
		// East's slice in west carries only the port it shares with the merged import.
		eventually(t, 5*time.Second, "east's db slice in west", func() error {
			sls, err := west.importedSlices("db")
			if err != nil {
				return err
			}
			sl, ok := sls["east"]
			if !ok || len(sl.Ports) != 1 || *sl.Ports[0].Name != "metrics" {
				return fmt.Errorf("slices %+v", sls)
			}
			return nil
		})
	})

	t.Run("bad input is reported and disturbs nothing", func(t *testing.T) {
		before, err := east.imp("web")
		if err != nil {
			t.Fatal(err)
		}
		west.export(t, "ghost")
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}
		must(west.kube.CoreV1().Services(ns).Create(bg, svc, metav1.CreateOptions{}))(t)
		west.export(t, "ext")
		eventually(t, 10*time.Second, "NoService condition", wantCond(west, "ghost", "Valid", metav1.ConditionFalse, "NoService",
			"Service shop/ghost not found: create a Service named ghost in namespace shop, or delete this ServiceExport"))
		eventually(t, 10*time.Second, "InvalidServiceType condition", wantCond(west, "ext", "Valid", metav1.ConditionFalse, "InvalidServiceType", "ExternalName"))
		eventually(t, 5*time.Second, "Ready=False for invalid", wantCond(west, "ghost", "Ready", metav1.ConditionFalse, "Pending"))
		time.Sleep(time.Second) // time for a wrong import to appear
		for _, name := range []string{"ghost", "ext"} {
			for _, s := range e.sites {
				if _, err := s.imp(name); !apierrors.IsNotFound(err) {
					t.Errorf("%s: ServiceImport %s exists for an invalid export (err %v)", s.id, name, err)
				}
			}
		}
		after, err := east.imp("web")
		if err != nil {
			t.Fatal(err)
		}
		if after.ResourceVersion != before.ResourceVersion {
			t.Errorf("web's ServiceImport changed: %+v -> %+v", before.Spec, after.Spec)
		}
		// Fixing the input makes the export valid.
		west.service(t, "ghost", false, "", http)
		eventually(t, 10*time.Second, "ghost valid once its Service exists", wantCond(west, "ghost", "Valid", metav1.ConditionTrue, "Valid"))
		eventually(t, 10*time.Second, "ghost imported in east", func() error { _, err := east.imp("ghost"); return err })
		west.unexport(t, "ghost")
		west.unexport(t, "ext")
		eventually(t, 10*time.Second, "ghost gone in east", func() error {
			if _, err := east.imp("ghost"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			return nil
		})

		// An invalid QoS label: the export is valid and says the label is ignored; the
		// import has no class. Fixed, the class reaches the import.
		gold := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gold", Labels: map[string]string{"patronus.io/qos-class": "gold"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
		must(west.kube.CoreV1().Services(ns).Create(bg, gold, metav1.CreateOptions{}))(t)
		west.export(t, "gold")
		eventually(t, 10*time.Second, "gold valid, label reported", wantCond(west, "gold", "Valid", metav1.ConditionTrue, "Valid",
			`label patronus.io/qos-class of the Service: invalid QoS class "gold"`, "keeps the client pods' classes"))
		classOf := func(want string) func() error {
			return func() error {
				si, err := east.imp("gold")
				if err != nil {
					return err
				}
				if got := si.Annotations["patronus.io/qos-class"]; got != want {
					return fmt.Errorf("east's import class %q, want %q", got, want)
				}
				return nil
			}
		}
		eventually(t, 10*time.Second, "gold imported without a class", classOf(""))
		cur := must(west.kube.CoreV1().Services(ns).Get(bg, "gold", metav1.GetOptions{}))(t)
		cur.Labels["patronus.io/qos-class"] = "bulk"
		must(west.kube.CoreV1().Services(ns).Update(bg, cur, metav1.UpdateOptions{}))(t)
		eventually(t, 10*time.Second, "gold's class bulk in east", classOf("bulk"))
		eventually(t, 5*time.Second, "Valid names the class", wantCond(west, "gold", "Valid", metav1.ConditionTrue, "Valid", "with QoS class bulk"))
		west.unexport(t, "gold")
		eventually(t, 10*time.Second, "gold gone in east", func() error {
			if _, err := east.imp("gold"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			return nil
		})
	})

	t.Run("a second agent in a cluster does not lead", func(t *testing.T) {
		c, err := mcs.New(mcs.Options{Kube: east.agent, MCS: east.agent, ClusterID: "east", Identity: "east-node2",
			LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
			Announcer: mcs.NewMeshAnnouncer(east.node)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(bg)
		var wg sync.WaitGroup
		wg.Go(func() { _ = c.Run(ctx) })
		time.Sleep(3 * time.Second)
		if c.Leading() || !east.ctrl.Leading() {
			t.Errorf("second agent leading=%v, first leading=%v", c.Leading(), east.ctrl.Leading())
		}
		lease, err := east.kube.CoordinationV1().Leases("kube-system").Get(bg, mcs.DefaultLeaseName, metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "east-gw" {
			t.Errorf("lease %v: %+v", err, lease)
		}
		cancel()
		wg.Wait()
	})

	t.Run("west crashes: its slices leave east within seconds", func(t *testing.T) {
		// A crash: the gossip stops without a leave. East drops west's endpoints once serf
		// declares west's gateway failed, long before the announcements expire (20-30s).
		if err := west.node.Shutdown(); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 12*time.Second, "west's slices removed in east", func() error {
			for _, name := range []string{"web", "db"} {
				sls, err := east.importedSlices(name)
				if err != nil {
					return err
				}
				if _, ok := sls["west"]; ok {
					return fmt.Errorf("%s: west's slice still there", name)
				}
			}
			si, err := east.imp("web")
			if err != nil {
				return err
			}
			if len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != "east" {
				return fmt.Errorf("web clusters %v", si.Status.Clusters)
			}
			return nil
		})
		t.Logf("west crashed -> its endpoints gone in east after %s", took)
		// West comes back (new node and agent): its endpoints return.
		west.stopController()
		west.nodeC()
		<-west.nodeD
		e.startNode(west)
		e.startController(west)
		took = eventually(t, 20*time.Second, "west's slice back in east", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			if _, ok := sls["west"]; !ok {
				return errors.New("not yet")
			}
			return nil
		})
		t.Logf("west restarted -> its endpoints back in east after %s", took)
	})

	t.Run("stopping west's agent withdraws at once", func(t *testing.T) {
		west.stopController()
		took := eventually(t, 5*time.Second, "west's slice removed in east", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			if _, ok := sls["west"]; ok {
				return errors.New("still there")
			}
			return nil
		})
		t.Logf("west agent stopped -> endpoints withdrawn in east after %s", took)
		e.startController(west)
		eventually(t, 20*time.Second, "west's slice back in east", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			if _, ok := sls["west"]; !ok {
				return errors.New("not yet")
			}
			return nil
		})
	})

	t.Run("unexport removes imports", func(t *testing.T) {
		west.unexport(t, "web")
		eventually(t, 10*time.Second, "west's slice gone in east, import stays for east's export", func() error {
			sls, err := east.importedSlices("web")
			if err != nil {
				return err
			}
			if len(sls) != 0 {
				return fmt.Errorf("slices %v", sls)
			}
			if _, err := east.imp("web"); err != nil {
				return err
			}
			return nil
		})
		east.unexport(t, "web")
		eventually(t, 10*time.Second, "web import gone everywhere", func() error {
			for _, s := range e.sites {
				if _, err := s.imp("web"); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%s: still there (%v)", s.id, err)
				}
				sls, err := s.importedSlices("web")
				if err != nil || len(sls) != 0 {
					return fmt.Errorf("%s: slices %v (%v)", s.id, sls, err)
				}
			}
			return nil
		})
	})
}
