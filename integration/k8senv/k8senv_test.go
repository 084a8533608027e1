package k8senv

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Two clusters started at the same time are independent: different hosts, and an object
// created in one is absent from the other.
func TestTwoClustersSideBySide(t *testing.T) {
	clusters := StartN(t, 2)
	a, b := clusters[0], clusters[1]
	if a.Host() == b.Host() {
		t.Fatalf("both clusters serve at %s", a.Host())
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "only-in-a"}}
	if _, err := a.Client().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace in cluster a: %v", err)
	}
	if _, err := b.Client().CoreV1().Namespaces().Get(ctx, "only-in-a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace of cluster a seen in cluster b: err=%v", err)
	}
	t.Logf("start times: %s, %s", a.StartDuration(), b.StartDuration())
}

// The API server stops and comes back on the same port with the same data; clients
// built before the restart keep working.
func TestRestartKeepsPortAndData(t *testing.T) {
	c := Start(t)
	ctx := context.Background()
	cs := c.Client()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "survives", Namespace: "default"}, Data: map[string]string{"k": "v"}}
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	host := c.Host()

	began := time.Now()
	c.StopAPIServer()
	t.Logf("API server stopped in %s", time.Since(began).Round(time.Millisecond))
	if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{}); err == nil {
		t.Fatal("API server still answers after StopAPIServer")
	}
	began = time.Now()
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %s", time.Since(began).Round(time.Millisecond))
	if c.Host() != host {
		t.Fatalf("host changed from %s to %s", host, c.Host())
	}
	got, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("after API server restart: %v %v", got, err)
	}

	began = time.Now()
	c.Stop()
	t.Logf("control plane stopped in %s", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane restarted in %s", time.Since(began).Round(time.Millisecond))
	if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{}); err != nil {
		t.Fatalf("after full restart: %v", err)
	}
}

// MCS CRDs are served as soon as Start returns; kubectl and a ServiceAccount token work,
// and RBAC denies a ServiceAccount without bindings.
func TestMCSCRDsKubectlAndServiceAccountToken(t *testing.T) {
	c := Start(t, WithMCSCRDs())
	ctx := context.Background()
	dc, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{"serviceexports", "serviceimports"} {
		gvr := schema.GroupVersionResource{Group: "multicluster.x-k8s.io", Version: "v1beta1", Resource: res}
		if _, err := dc.Resource(gvr).Namespace("default").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("listing %s: %v", res, err)
		}
	}
	out, err := c.Kubectl("get", "crd", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "serviceexports.multicluster.x-k8s.io") {
		t.Errorf("kubectl get crd: %q", out)
	}

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody", Namespace: "default"}}
	if _, err := c.Client().CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, path, err := c.ServiceAccountKubeconfig(ctx, "default", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("unbound ServiceAccount listing pods: want Forbidden, got %v", err)
	}
	who, err := c.KubectlAs(path, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
	if err != nil {
		t.Fatal(err)
	}
	if who != "system:serviceaccount:default:nobody" {
		t.Errorf("whoami with the token kubeconfig = %q", who)
	}
}

// BenchmarkStart measures Start (PKI, etcd, kube-apiserver /readyz, system namespaces);
// each cluster is stopped outside the timer so memory stays flat.
func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		c := Start(b)
		b.StopTimer()
		c.Stop()
		b.StartTimer()
	}
}

// BenchmarkRestartAPIServer measures StopAPIServer+StartAPIServer (what a reconnect test waits for).
func BenchmarkRestartAPIServer(b *testing.B) {
	c := Start(b)
	for b.Loop() {
		c.StopAPIServer()
		if err := c.StartAPIServer(); err != nil {
			b.Fatal(err)
		}
	}
}
