package rbac

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/nodenet/alloc"
)

const ns = k8senv.PatronusNamespace

// access is one question for SelfSubjectAccessReview.
type access struct {
	verb, group, resource, subresource, namespace, name string
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.group != "" {
		s += "." + a.group
	}
	if a.subresource != "" {
		s += "/" + a.subresource
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	} else {
		s += " (cluster-wide)"
	}
	return s
}

const mcs = "multicluster.x-k8s.io"

// needed is everything the agent does with the API (see manifests/03-rbac.yaml). Pod,
// Service and EndpointSlice reads are cluster-wide: informers list all namespaces.
var needed = []access{
	{verb: "get", resource: "pods"}, {verb: "list", resource: "pods"}, {verb: "watch", resource: "pods"},
	{verb: "list", resource: "namespaces"}, {verb: "watch", resource: "namespaces"}, {verb: "get", resource: "namespaces", name: "default"},
	{verb: "list", resource: "nodes"}, {verb: "watch", resource: "nodes"}, {verb: "get", resource: "nodes", name: "node-a"},
	{verb: "patch", resource: "nodes", name: "node-a"}, // node encryption: the WireGuard key annotation
	{verb: "list", resource: "services"}, {verb: "watch", resource: "services"},
	{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"}, {verb: "watch", group: "discovery.k8s.io", resource: "endpointslices"},
	{verb: "create", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default"},
	{verb: "update", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default", name: "x"},
	{verb: "delete", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default", name: "x"},
	{verb: "list", group: "networking.k8s.io", resource: "networkpolicies"}, {verb: "watch", group: "networking.k8s.io", resource: "networkpolicies"},
	{verb: "list", group: mcs, resource: "serviceexports"}, {verb: "watch", group: mcs, resource: "serviceexports"},
	{verb: "update", group: mcs, resource: "serviceexports", subresource: "status", namespace: "default", name: "x"},
	{verb: "list", group: mcs, resource: "serviceimports"}, {verb: "watch", group: mcs, resource: "serviceimports"},
	{verb: "create", group: mcs, resource: "serviceimports", namespace: "default"},
	{verb: "update", group: mcs, resource: "serviceimports", namespace: "default", name: "x"},
	{verb: "delete", group: mcs, resource: "serviceimports", namespace: "default", name: "x"},
	{verb: "update", group: mcs, resource: "serviceimports", subresource: "status", namespace: "default", name: "x"},
	{verb: "create", resource: "events", namespace: "default"}, {verb: "patch", resource: "events", namespace: "default", name: "x"},
	{verb: "create", group: "events.k8s.io", resource: "events", namespace: "default"},
	{verb: "get", resource: "secrets", namespace: ns, name: "patronus-cluster-key"},
	{verb: "get", resource: "secrets", namespace: ns, name: "patronus-gossip-key"},
	{verb: "create", resource: "secrets", namespace: ns},
	{verb: "get", resource: "configmaps", namespace: ns, name: "patronus-config"},
	{verb: "list", resource: "configmaps", namespace: ns, name: "patronus-config"},
	{verb: "watch", resource: "configmaps", namespace: ns, name: "patronus-config"},
	{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "patronus"},
	{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: ns},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "patronus"},
	// Pod block Leases (nodenet): claim, watch, release a deleted Node's blocks.
	{verb: "list", group: "coordination.k8s.io", resource: "leases", namespace: ns},
	{verb: "watch", group: "coordination.k8s.io", resource: "leases", namespace: ns},
	{verb: "delete", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "patronus-block-10-244-1-0-24"},
}

// denied is broader access a compromised agent must not have.
var denied = []access{
	{verb: "list", resource: "secrets"},                                     // all Secrets, cluster-wide
	{verb: "list", resource: "secrets", namespace: ns},                      // all Secrets in its own namespace
	{verb: "get", resource: "secrets", namespace: ns, name: "other-secret"}, // a Secret not its own
	{verb: "get", resource: "secrets", namespace: "default", name: "patronus-cluster-key"},
	{verb: "update", resource: "secrets", namespace: ns, name: "patronus-cluster-key"}, // never replace the key
	{verb: "delete", resource: "secrets", namespace: ns, name: "patronus-cluster-key"},
	{verb: "create", resource: "secrets", namespace: "default"},
	{verb: "delete", resource: "pods", namespace: "default", name: "x"},
	{verb: "create", resource: "pods", namespace: "default"},
	{verb: "update", resource: "pods", namespace: "default", name: "x"},
	{verb: "create", resource: "pods", subresource: "exec", namespace: "default", name: "x"},
	{verb: "create", group: "apps", resource: "deployments", namespace: "default"},
	{verb: "update", group: "apps", resource: "daemonsets", namespace: ns, name: "patronus-cni-daemon"},
	{verb: "update", resource: "nodes", name: "node-a"},
	{verb: "delete", resource: "namespaces", name: "default"},
	{verb: "create", resource: "services", namespace: "default"},
	{verb: "create", group: "networking.k8s.io", resource: "networkpolicies", namespace: "default"},
	{verb: "update", group: mcs, resource: "serviceexports", namespace: "default", name: "x"},
	{verb: "create", group: mcs, resource: "serviceexports", namespace: "default"},
	{verb: "get", resource: "configmaps", namespace: ns, name: "other-config"},
	{verb: "list", resource: "configmaps", namespace: ns},
	{verb: "update", resource: "configmaps", namespace: ns, name: "patronus-config"},
	{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: "default", name: "patronus"},
	{verb: "delete", group: "coordination.k8s.io", resource: "leases", namespace: "default", name: "patronus-block-10-244-1-0-24"},
	{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: "default"},
	{verb: "list", group: "coordination.k8s.io", resource: "leases"}, // cluster-wide
	{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
	{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: "patronus"},
	{verb: "create", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
	{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: ns, name: "patronus"},
}

// Installs manifests/ with server-side apply (twice: a re-apply must be clean), checks the
// objects, then asks the API server, as the patronus ServiceAccount, what it may do.
func TestManifestsRBACLeastPrivilege(t *testing.T) {
	c := k8senv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	saCfg, saKubeconfig, err := c.InstallPatronus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.ApplyManifests(mustRoot(t) + "/manifests"); err != nil {
		t.Fatalf("re-applying manifests: %v\n%s", err, out)
	}

	admin := c.Client()
	checkObjects(t, ctx, admin)

	sa, err := kubernetes.NewForConfig(saCfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range needed {
		if !allowed(t, ctx, sa, a) {
			t.Errorf("patronus ServiceAccount may not %s; the agent needs it", a)
		}
	}
	for _, a := range denied {
		if allowed(t, ctx, sa, a) {
			t.Errorf("patronus ServiceAccount may %s; that is broader than the agent needs", a)
		}
	}

	t.Run("real calls", func(t *testing.T) { realCalls(t, ctx, c, admin, sa, saCfg) })

	// The same identity through kubectl, as an operator would check it.
	if out, err := c.KubectlAs(saKubeconfig, "auth", "can-i", "list", "secrets", "-A"); err == nil || out != "no\n" {
		t.Errorf("kubectl auth can-i list secrets -A as patronus: %q, %v; want no", out, err)
	}
	if out, err := c.KubectlAs(saKubeconfig, "auth", "can-i", "watch", "pods", "-A"); err != nil || out != "yes\n" {
		t.Errorf("kubectl auth can-i watch pods -A as patronus: %q, %v; want yes", out, err)
	}
}

func mustRoot(t *testing.T) string {
	root, err := k8senv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func allowed(t *testing.T, ctx context.Context, cs kubernetes.Interface, a access) bool {
	t.Helper()
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace, Name: a.name,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectAccessReview %s: %v", a, err)
	}
	return r.Status.Allowed
}

func checkObjects(t *testing.T, ctx context.Context, cs kubernetes.Interface) {
	t.Helper()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "patronus", metav1.GetOptions{}); err != nil {
		t.Errorf("ServiceAccount: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "patronus", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, "patronus", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRoleBinding: %v", err)
	}
	if _, err := cs.RbacV1().Roles(ns).Get(ctx, "patronus", metav1.GetOptions{}); err != nil {
		t.Errorf("Role: %v", err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Get(ctx, "patronus", metav1.GetOptions{}); err != nil {
		t.Errorf("RoleBinding: %v", err)
	}

	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "patronus-config", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ConfigMap: %v", err)
	}
	// The keys of docs/CONTRACT.md, section "ConfigMap patronus-config".
	for _, k := range []string{"cluster-id", "cluster-cidr", "service-cidr", "remote-clusters", "node-block-size",
		"datapath", "multicast-group", "key-rotation", "probe-interval"} {
		if _, ok := cm.Data[k]; !ok {
			t.Errorf("ConfigMap patronus-config lacks key %q", k)
		}
	}

	ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, "patronus-cni-daemon", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("DaemonSet: %v", err)
	}
	checkDaemonSet(t, ds)
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if ds.Spec.Template.Labels["app"] != "patronus" || ds.Spec.Selector.MatchLabels["app"] != "patronus" {
		t.Errorf("DaemonSet labels/selector: %v / %v", ds.Spec.Template.Labels, ds.Spec.Selector.MatchLabels)
	}
	if spec.ServiceAccountName != "patronus" || !spec.HostNetwork || !spec.HostPID {
		t.Errorf("DaemonSet pod: serviceAccount %q hostNetwork %v hostPID %v", spec.ServiceAccountName, spec.HostNetwork, spec.HostPID)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("DaemonSet must tolerate every taint: %+v", spec.Tolerations)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for name, path := range map[string]string{"cni-bin": "/opt/cni/bin", "cni-conf": "/etc/cni/net.d",
		"patronus-db": "/var/lib/patronus", "patronus-run": "/var/run/patronus", "bpffs": "/sys/fs/bpf"} {
		if hostPaths[name] != path {
			t.Errorf("hostPath volume %s = %q, want %q", name, hostPaths[name], path)
		}
	}
	if len(spec.InitContainers) != 1 || !slices.Equal(spec.InitContainers[0].Command,
		[]string{"patronus", "install-cni", "--no-conflist", "--bin-dir", "/host/opt/cni/bin", "--conf-dir", "/host/etc/cni/net.d"}) {
		t.Errorf("init container: %+v", spec.InitContainers)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("containers: %d", len(spec.Containers))
	}
	ctr := spec.Containers[0]
	if !slices.Equal(ctr.Command, []string{"patronus", "agent", "--manage-conflist"}) {
		t.Errorf("agent command %v", ctr.Command)
	}
	// The agent writes the conflist (install-cni --no-conflist): its conf dir is writable.
	if i := slices.IndexFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "cni-conf" }); i < 0 ||
		ctr.VolumeMounts[i].MountPath != "/etc/cni/net.d" || ctr.VolumeMounts[i].ReadOnly {
		t.Errorf("agent must mount cni-conf writable at /etc/cni/net.d: %+v", ctr.VolumeMounts)
	}
	if ctr.SecurityContext == nil || ctr.SecurityContext.Privileged == nil || !*ctr.SecurityContext.Privileged {
		t.Error("agent container is not privileged")
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range ctr.Env {
		env[e.Name] = e
	}
	if e := env["CLUSTER_ID"]; e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil ||
		e.ValueFrom.ConfigMapKeyRef.Name != "patronus-config" || e.ValueFrom.ConfigMapKeyRef.Key != "cluster-id" {
		t.Errorf("CLUSTER_ID env: %+v", e)
	}
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME env: %+v", e)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntValue() != 9476 {
		t.Errorf("readiness probe: %+v", p)
	}
	if p := ctr.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.IntValue() != 9476 {
		t.Errorf("liveness probe: %+v", p)
	}
}

// realCalls does, with the ServiceAccount's token, the requests the agent makes, and a few
// it must not be able to make: an access review answers for the authorizer, these prove
// the objects and selectors the agent uses really work.
func realCalls(t *testing.T, ctx context.Context, c *k8senv.Cluster, admin, sa kubernetes.Interface, saCfg *rest.Config) {
	// Setup by the admin: a Secret the agent must not read, a Service to export.
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other-secret"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Informer-style reads.
	if _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); err != nil {
		t.Errorf("list own-node pods: %v", err)
	}
	w, err := sa.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"})
	if err != nil {
		t.Errorf("watch own-node pods: %v", err)
	} else {
		w.Stop()
	}
	if _, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list networkpolicies: %v", err)
	}
	if _, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list endpointslices: %v", err)
	}
	// The ConfigMap by name, and through a name-selected list (what a filtered informer does).
	if _, err := sa.CoreV1().ConfigMaps(ns).Get(ctx, "patronus-config", metav1.GetOptions{}); err != nil {
		t.Errorf("get patronus-config: %v", err)
	}
	if l, err := sa.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=patronus-config"}); err != nil || len(l.Items) != 1 {
		t.Errorf("list patronus-config by field selector: %v", err)
	}
	if _, err := sa.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list all configmaps in %s: want Forbidden, got %v", ns, err)
	}

	// Create-if-absent of the cluster key, then read it back; other Secrets stay hidden.
	key := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "patronus-cluster-key"}, Data: map[string][]byte{"private": []byte("k")}}
	if _, err := sa.CoreV1().Secrets(ns).Create(ctx, key, metav1.CreateOptions{}); err != nil {
		t.Errorf("create patronus-cluster-key: %v", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).Create(ctx, key, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
		t.Errorf("second create of patronus-cluster-key: want AlreadyExists, got %v", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).Get(ctx, "patronus-cluster-key", metav1.GetOptions{}); err != nil {
		t.Errorf("get patronus-cluster-key: %v", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).Get(ctx, "other-secret", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get other-secret: want Forbidden, got %v", err)
	}
	if _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets cluster-wide: want Forbidden, got %v", err)
	}

	// Leader-election lease.
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "patronus"}}
	got, err := sa.CoordinationV1().Leases(ns).Create(ctx, lease, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("create lease: %v", err)
	} else {
		holder := "node-a"
		got.Spec.HolderIdentity = &holder
		if _, err := sa.CoordinationV1().Leases(ns).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Errorf("update lease: %v", err)
		}
	}

	// A pod block Lease (nodenet's claim), listed by label and released as nodenet does
	// for a deleted Node (delete with a UID precondition).
	block := netip.MustParsePrefix("10.244.1.0/24")
	claimer := "node-b"
	if _, err := sa.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: alloc.LeaseName(block), Labels: map[string]string{nodenet.LabelComponent: nodenet.ComponentPodBlock},
			Annotations: map[string]string{nodenet.AnnotationBlock: block.String()}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &claimer},
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create block lease: %v", err)
	} else if rel, err := nodenet.ReleaseNode(ctx, mustKClient(t, saCfg), ns, claimer); err != nil || len(rel) != 1 || rel[0] != block {
		t.Errorf("release block lease: %v %v", rel, err)
	}

	// An Event about a pod.
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "p.qos", Namespace: "default"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "p"},
		Reason:         "InvalidQoSAnnotation", Message: "test", Type: corev1.EventTypeWarning,
		Source: corev1.EventSource{Component: "patronus"},
	}
	if _, err := sa.CoreV1().Events("default").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Errorf("create event: %v", err)
	}

	// Denied writes.
	if err := sa.CoreV1().Pods("default").Delete(ctx, "x", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete pod: want Forbidden, got %v", err)
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "d"}}
	if _, err := sa.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create deployment: want Forbidden, got %v", err)
	}

	// MCS: the agent writes an export's status and owns imports.
	saDyn, err := dynamic.NewForConfig(saCfg)
	if err != nil {
		t.Fatal(err)
	}
	adminDyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	exports := schema.GroupVersionResource{Group: mcs, Version: "v1beta1", Resource: "serviceexports"}
	imports := schema.GroupVersionResource{Group: mcs, Version: "v1beta1", Resource: "serviceimports"}
	se := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": mcs + "/v1beta1", "kind": "ServiceExport", "metadata": map[string]any{"name": "web", "namespace": "default"},
	}}
	if _, err := adminDyn.Resource(exports).Namespace("default").Create(ctx, se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cur, err := saDyn.Resource(exports).Namespace("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get serviceexport: %v", err)
	}
	_ = unstructured.SetNestedSlice(cur.Object, []any{map[string]any{
		"type": "Valid", "status": "True", "reason": "Exported", "message": "ok",
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
	}}, "status", "conditions")
	if _, err := saDyn.Resource(exports).Namespace("default").UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Errorf("update serviceexport status: %v", err)
	}
	if err := saDyn.Resource(exports).Namespace("default").Delete(ctx, "web", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete serviceexport: want Forbidden, got %v", err)
	}
	si := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": mcs + "/v1beta1", "kind": "ServiceImport", "metadata": map[string]any{"name": "web", "namespace": "default"},
		"spec": map[string]any{"type": "ClusterSetIP", "ports": []any{map[string]any{"port": int64(80), "protocol": "TCP"}}},
	}}
	if _, err := saDyn.Resource(imports).Namespace("default").Create(ctx, si, metav1.CreateOptions{}); err != nil {
		t.Errorf("create serviceimport: %v", err)
	} else if err := saDyn.Resource(imports).Namespace("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete serviceimport: %v", err)
	}
}

// mustKClient is the agent's kind of client (package kclient) for cfg.
func mustKClient(t *testing.T, cfg *rest.Config) *kclient.Client {
	t.Helper()
	kc, err := kclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}
