package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// A pod object plus its CNI registration is listed with IP and labels; label changes
// follow; a restart of the agent shows the same state without rewriting the rows; the CNI
// DEL + object deletion make it disappear. Pods on other nodes are not the agent's.
func TestPodLifecycleAndRestart(t *testing.T) {
	c := k8senv.Start(t)
	k := c.Client()
	dir := nodeDir(t)
	opts := baseOptions(t, c, dir)

	web := createPod(t, k, "default", "web", map[string]string{"app": "web"}, nil)
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-web", Namespace: "default", Name: "web", UID: string(web.UID),
		HostVeth: "pt0123456789", IPs: []netip.Prefix{mustPrefix("10.244.1.10/16")}})

	ra := startAgent(t, opts)
	got := waitPod(t, ra.client, "default", "web", func(p *localapi.Pod) error {
		if p.Labels["app"] != "web" {
			return fmt.Errorf("labels %v", p.Labels)
		}
		return nil
	})
	if len(got.IPs) != 1 || got.IPs[0] != "10.244.1.10/16" || got.UID != string(web.UID) || got.QoS.Class != "best-effort" {
		t.Fatalf("pod as listed: %+v", got)
	}

	// A pod registered after the agent started (CNI ADD while running).
	api := createPod(t, k, "default", "api", map[string]string{"app": "api", "tier": "backend"},
		map[string]string{"patronus.io/qos-class": "latency-sensitive", "patronus.io/max-latency-ms": "20"})
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-api", Namespace: "default", Name: "api",
		IPs: []netip.Prefix{mustPrefix("10.244.1.11/16")}}) // no K8S_POD_UID: the agent fills it
	got = waitPod(t, ra.client, "default", "api", nil)
	if got.UID != string(api.UID) || got.QoS.Class != "latency-sensitive" || got.QoS.MaxLatencyMs != 20 || got.Labels["tier"] != "backend" {
		t.Fatalf("api pod: %+v", got)
	}

	// Level-based: a label change on the object reaches the database.
	web.Labels["version"] = "v2"
	if _, err := k.CoreV1().Pods("default").Update(context.Background(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ra.client, "default", "web", func(p *localapi.Pod) error {
		if p.Labels["version"] != "v2" {
			return fmt.Errorf("labels %v", p.Labels)
		}
		return nil
	})

	// NetworkPolicies seen.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := k.NetworkingV1().NetworkPolicies("default").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "status to count the NetworkPolicy", func() error {
		s, err := ra.client.Status(context.Background())
		if err != nil {
			return err
		}
		if s.NetworkPolicies != 1 || s.PodsManaged != 2 || s.Node != node || s.ClusterID != "test-cluster" || s.Tunnels == nil {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})

	// Metrics on the TCP listener.
	s, _ := ra.client.Status(context.Background())
	body := httpGet(t, "http://"+s.MetricsAddr+"/metrics")
	for _, want := range []string{"patronus_agent_ready 1", "patronus_agent_pods_managed 2", `patronus_agent_objects{kind="networkpolicies"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if b := httpGet(t, "http://"+s.MetricsAddr+"/readyz"); !strings.Contains(b, "ok") {
		t.Errorf("metrics /readyz: %q", b)
	}

	// Restart: same state, and rows already up to date are not rewritten.
	before := syncedAt(t, opts.DatabasePath)
	if err := ra.stop(t); err != nil {
		t.Fatalf("agent returned %v on clean shutdown", err)
	}
	if _, err := os.Stat(opts.SocketPath); !os.IsNotExist(err) {
		t.Errorf("socket still present after shutdown: %v", err)
	}
	// Same registry: the first run unregistered its collectors on the way out.
	ra = startAgent(t, opts)
	waitPod(t, ra.client, "default", "web", func(p *localapi.Pod) error {
		if p.Labels["version"] != "v2" {
			return fmt.Errorf("labels %v", p.Labels)
		}
		return nil
	})
	waitPod(t, ra.client, "default", "api", nil)
	time.Sleep(500 * time.Millisecond) // let the first reconciles run
	if after := syncedAt(t, opts.DatabasePath); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("restart rewrote up-to-date rows: before %v, after %v", before, after)
	}

	// A pod of another node is not in the agent's watch: a row naming it stays unmatched.
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "elsewhere"},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}
	if _, err := k.CoreV1().Pods("default").Create(context.Background(), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-elsewhere", Namespace: "default", Name: "elsewhere"})
	time.Sleep(time.Second)
	pods, err := ra.client.Pods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := findPod(pods, "default", "elsewhere"); p == nil || p.Synced {
		t.Fatalf("pod of node-b: want listed (it is in the database) but unmatched, got %+v", p)
	}
	unregisterPod(t, opts.DatabasePath, "ctr-elsewhere")

	// CNI DEL + object deletion: gone.
	unregisterPod(t, opts.DatabasePath, "ctr-web")
	if err := k.CoreV1().Pods("default").Delete(context.Background(), "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "web to disappear", func() error {
		pods, err := ra.client.Pods(context.Background())
		if err != nil {
			return err
		}
		if findPod(pods, "default", "web") != nil || findPod(pods, "default", "api") == nil {
			return fmt.Errorf("pods %+v", pods)
		}
		s, err := ra.client.Status(context.Background())
		if err != nil {
			return err
		}
		if s.PodsManaged != 1 {
			return fmt.Errorf("podsManaged %d", s.PodsManaged)
		}
		return nil
	})
}

func syncedAt(t *testing.T, path string) map[string]time.Time {
	t.Helper()
	db, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.ListPods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]time.Time{}
	for _, r := range rows {
		m[r.ContainerID] = r.APISyncedAt
	}
	return m
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// An invalid QoS annotation yields a Warning Event on the pod naming the annotation and
// the accepted values; the pod gets the default class (here the conflist's, bulk).
func TestInvalidQoSAnnotation(t *testing.T) {
	c := k8senv.Start(t)
	k := c.Client()
	dir := nodeDir(t)
	opts := baseOptions(t, c, dir)
	conflist := `{"cniVersion":"1.0.0","name":"patronus-k8s","plugins":[{"type":"patronus-cni","bridge":"cni-bridge0",
		"sdwan":{"cluster_id":"test-cluster","default_qos_class":"bulk"}}]}`
	if err := os.WriteFile(opts.ConflistPath, []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	ra := startAgent(t, opts)

	pod := createPod(t, k, "default", "voip", map[string]string{"app": "voip"},
		map[string]string{"patronus.io/qos-class": "gold", "patronus.io/min-bandwidth-mbps": "10"})
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-voip", Namespace: "default", Name: "voip", UID: string(pod.UID),
		IPs: []netip.Prefix{mustPrefix("10.244.1.20/16")}})
	got := waitPod(t, ra.client, "default", "voip", nil)
	if got.QoS.Class != "bulk" || got.QoS.MinBandwidthMbps != 10 || len(got.QoS.Errors) != 1 {
		t.Fatalf("want default class bulk, bandwidth kept and one error: %+v", got.QoS)
	}

	var ev corev1.Event
	waitFor(t, 30*time.Second, "InvalidQoSAnnotation event", func() error {
		l, err := k.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.name": "voip", "reason": agent.ReasonInvalidQoSAnnotation}.String()})
		if err != nil {
			return err
		}
		if len(l.Items) == 0 {
			return fmt.Errorf("no event yet")
		}
		ev = l.Items[0]
		return nil
	})
	for _, want := range []string{"patronus.io/qos-class", `"gold"`, "latency-sensitive, bulk, best-effort", "default class bulk"} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("event message %q lacks %q", ev.Message, want)
		}
	}
	if ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.UID != pod.UID || ev.Source.Host != node {
		t.Errorf("event: type %s object %+v source %+v", ev.Type, ev.InvolvedObject, ev.Source)
	}

	// The agent is still healthy, and fixing the annotation fixes the class.
	pod, _ = k.CoreV1().Pods("default").Get(context.Background(), "voip", metav1.GetOptions{})
	pod.Annotations["patronus.io/qos-class"] = "latency-sensitive"
	if _, err := k.CoreV1().Pods("default").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ra.client, "default", "voip", func(p *localapi.Pod) error {
		if p.QoS.Class != "latency-sensitive" || len(p.QoS.Errors) != 0 {
			return fmt.Errorf("qos %+v", p.QoS)
		}
		return nil
	})
}

// The API server goes away and comes back while the agent runs: the agent keeps serving,
// does not exit, and catches up with a pod created after the restart.
func TestAPIServerRestart(t *testing.T) {
	c := k8senv.Start(t)
	dir := nodeDir(t)
	opts := baseOptions(t, c, dir)
	ra := startAgent(t, opts)

	t0 := time.Now()
	c.StopAPIServer()
	t.Logf("API server stopped in %s", time.Since(t0))
	time.Sleep(2 * time.Second)
	if err := ra.client.Healthz(context.Background()); err != nil {
		t.Fatalf("healthz during outage: %v", err)
	}
	if err := ra.client.Ready(context.Background()); err != nil {
		t.Fatalf("readyz must stay ok during an API outage (CNI STATUS depends on it): %v", err)
	}
	t0 = time.Now()
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server started in %s", time.Since(t0))
	select {
	case err := <-ra.done:
		t.Fatalf("agent exited during the outage: %v", err)
	default:
	}

	k := c.Client()
	p := createPod(t, k, "default", "late", map[string]string{"app": "late"}, nil)
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-late", Namespace: "default", Name: "late", UID: string(p.UID),
		IPs: []netip.Prefix{mustPrefix("10.244.1.30/16")}})
	waitPod(t, ra.client, "default", "late", func(p *localapi.Pod) error {
		if p.Labels["app"] != "late" {
			return fmt.Errorf("labels %v", p.Labels)
		}
		return nil
	})

	t.Logf("agent caught up %s after the API server restart", time.Since(t0))

	// Whole control plane (etcd too) restarted.
	t0 = time.Now()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane restarted in %s", time.Since(t0))
	p2 := createPod(t, k, "default", "later", map[string]string{"app": "later"}, nil)
	registerPod(t, opts.DatabasePath, store.Pod{ContainerID: "ctr-later", Namespace: "default", Name: "later", UID: string(p2.UID)})
	// After a whole-control-plane outage client-go's reflectors reconnect with a backoff
	// that can reach 30 s on its own: allow for it on a loaded machine.
	waitPodWithin(t, 90*time.Second, ra.client, "default", "later", nil)
	t.Logf("agent caught up %s after the control plane restart", time.Since(t0))
}

// Without the MCS CRDs the agent runs and says so; once they are installed it watches
// ServiceExports.
func TestMCSCRDsInstalledLater(t *testing.T) {
	c := k8senv.Start(t)
	dir := nodeDir(t)
	opts := baseOptions(t, c, dir)
	ra := startAgent(t, opts)
	s, err := ra.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.MCS.Available {
		t.Fatal("MCS reported available without CRDs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.InstallMCSCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "frontend"}}
	if _, err := mc.MulticlusterV1beta1().ServiceExports("default").Create(ctx, se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "MCS watched and the ServiceExport counted", func() error {
		s, err := ra.client.Status(context.Background())
		if err != nil {
			return err
		}
		if !s.MCS.Available || s.MCS.ServiceExports != 1 {
			return fmt.Errorf("mcs %+v", s.MCS)
		}
		return nil
	})
}

// Invalid configuration stops the agent at start with an error naming the key.
func TestConfigurationErrors(t *testing.T) {
	c := k8senv.Start(t)
	k := c.Client()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"cluster-id": "prod", "cluster-cidr": "10.244.0.0/33"}}
	if _, err := k.CoreV1().ConfigMaps("kube-system").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		clusterID string
		want      []string
	}{
		{"bad key", "prod", []string{"cluster-cidr", "kube-system/patronus-config"}},
		{"disagreeing ids", "staging", []string{"CLUSTER_ID", `"staging"`, "key cluster-id", `"prod"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "disagreeing ids" {
				cm.Data["cluster-cidr"] = "10.244.0.0/16"
				if _, err := k.CoreV1().ConfigMaps("kube-system").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			opts := baseOptions(t, c, nodeDir(t))
			opts.ClusterID = tc.clusterID
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := agent.Run(ctx, opts)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("want a configuration error at start, got %v (ctx %v)", err, ctx.Err())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// A ConfigMap edit while the agent runs is validated and reported, never applied
// half-way and never fatal: an invalid edit leaves the agent running.
func TestConfigMapChangedWhileRunning(t *testing.T) {
	c := k8senv.Start(t)
	k := c.Client()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"cluster-id": "test-cluster", "cluster-cidr": "10.244.0.0/16"}}
	if _, err := k.CoreV1().ConfigMaps("kube-system").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ra := startAgent(t, baseOptions(t, c, nodeDir(t)))
	warning := func() string {
		s, err := ra.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return s.ConfigWarning
	}
	if w := warning(); w != "" {
		t.Fatalf("warning at start: %q", w)
	}
	update := func(cidr string) {
		t.Helper()
		cm.Data["cluster-cidr"] = cidr
		var err error
		if cm, err = k.CoreV1().ConfigMaps("kube-system").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update("10.244.0.0/33")
	waitFor(t, 30*time.Second, "invalid ConfigMap reported", func() error {
		if w := warning(); !strings.Contains(w, "cluster-cidr") || !strings.Contains(w, "invalid") {
			return fmt.Errorf("warning %q", w)
		}
		return nil
	})
	update("10.250.0.0/16")
	waitFor(t, 30*time.Second, "changed ConfigMap reported", func() error {
		if w := warning(); !strings.Contains(w, "restart the agent") {
			return fmt.Errorf("warning %q", w)
		}
		return nil
	})
	update("10.244.0.0/16")
	waitFor(t, 30*time.Second, "warning cleared", func() error {
		if w := warning(); w != "" {
			return fmt.Errorf("warning %q", w)
		}
		return nil
	})
	select {
	case err := <-ra.done:
		t.Fatalf("agent exited: %v", err)
	default:
	}
}

// An agent started while the API server is down waits (healthy, not ready, saying why)
// instead of exiting into a crash loop, and becomes ready when the API server is back.
func TestStartWithAPIServerDown(t *testing.T) {
	c := k8senv.Start(t)
	c.StopAPIServer()
	opts := baseOptions(t, c, nodeDir(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, opts) }()
	client := localapi.NewClient(opts.SocketPath)
	waitFor(t, 30*time.Second, "healthz while the API server is down", func() error { return client.Healthz(context.Background()) })
	time.Sleep(2 * time.Second)
	err := client.Ready(context.Background())
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "configuration") {
		t.Fatalf("readyz while the API server is down: want 503 naming what it waits for, got %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("agent exited while the API server was down: %v", err)
	default:
	}
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "ready after the API server came up", func() error { return client.Ready(context.Background()) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("clean shutdown: %v", err)
	}
}
