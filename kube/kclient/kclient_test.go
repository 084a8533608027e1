package kclient_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/kube/kclient"
)

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgainstAPIServer drives every call the agent makes through kclient against a real
// kube-apiserver: the requests must be the ones client-go's typed clients make (paths,
// bodies, query parameters, protobuf for built-in kinds, JSON for the MCS CRDs).
func TestAgainstAPIServer(t *testing.T) {
	c := k8senv.Start(t, k8senv.WithMCSCRDs())
	kc := c.AgentClient()
	ctx := context.Background()
	const ns = "kc-test"
	if _, err := kc.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("core CRUD, selectors, patch", func(t *testing.T) {
		pods := kc.Pods(ns)
		for i, node := range []string{"n1", "n2"} {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": node}},
				Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
			got, err := pods.Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.UID == "" || got.Namespace != ns || got.Spec.NodeName != node {
				t.Fatalf("created pod %+v", got.ObjectMeta)
			}
		}
		l, err := kc.Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", "n2").String()})
		if err != nil || len(l.Items) != 1 || l.Items[0].Name != "p1" {
			t.Fatalf("field-selected list across namespaces: %v %+v", err, l)
		}
		l, err = pods.List(ctx, metav1.ListOptions{LabelSelector: "app=n1"})
		if err != nil || len(l.Items) != 1 || l.Items[0].Name != "p0" {
			t.Fatalf("label-selected list: %v %+v", err, l)
		}
		got, err := pods.Get(ctx, "p0", metav1.GetOptions{})
		if err != nil || got.Name != "p0" {
			t.Fatalf("get: %v", err)
		}
		got.Labels["x"] = "y"
		upd, err := pods.Update(ctx, got, metav1.UpdateOptions{})
		if err != nil || upd.Labels["x"] != "y" || upd.ResourceVersion == got.ResourceVersion {
			t.Fatalf("update: %v", err)
		}
		if _, err := pods.Update(ctx, got, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Fatalf("update with a stale resourceVersion: %v, want Conflict", err)
		}
		pt, err := pods.Patch(ctx, "p0", types.MergePatchType, []byte(`{"metadata":{"annotations":{"a":"b"}}}`), metav1.PatchOptions{})
		if err != nil || pt.Annotations["a"] != "b" {
			t.Fatalf("patch: %v", err)
		}
		uid := types.UID("not-it")
		if err := pods.Delete(ctx, "p0", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); !apierrors.IsConflict(err) {
			t.Fatalf("delete with a wrong UID precondition: %v, want Conflict", err)
		}
		if err := pods.Delete(ctx, "p1", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &l.Items[0].UID}}); err == nil {
			t.Fatal("delete p1 with p0's UID succeeded")
		}
		if _, err := pods.Get(ctx, "nope", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("get of a missing pod: %v, want NotFound", err)
		}
		if _, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p1"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create twice: %v, want AlreadyExists", err)
		}
	})

	t.Run("other groups", func(t *testing.T) {
		if _, err := kc.ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"k": "v"}},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if s, err := kc.Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, Data: map[string][]byte{"k": {0, 1, 2}}},
			metav1.CreateOptions{}); err != nil || len(s.Data["k"]) != 3 {
			t.Fatalf("secret: %v", err)
		}
		if _, err := kc.Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np"}},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "es"},
			AddressType: discoveryv1.AddressTypeIPv4}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "l"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "kc-node"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if l, err := kc.Nodes().List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) == 0 {
			t.Fatalf("nodes: %v", err)
		}
		ev, err := kc.Events(ns).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e"}, InvolvedObject: corev1.ObjectReference{
			Kind: "Pod", Namespace: ns, Name: "p1"}, Reason: "R", Message: "m", Type: corev1.EventTypeNormal, Count: 1}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ev, err = kc.Events(ns).Patch(ctx, ev.Name, types.StrategicMergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{}); err != nil || ev.Count != 2 {
			t.Fatalf("event patch: %v", err)
		}
	})

	t.Run("MCS: CRD resources, status, discovery", func(t *testing.T) {
		se, err := kc.ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "svc"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		se.Status.Conditions = []metav1.Condition{{Type: "Valid", Status: metav1.ConditionTrue, Reason: "OK", LastTransitionTime: metav1.Now()}}
		if se, err = kc.ServiceExports(ns).UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil || len(se.Status.Conditions) != 1 {
			t.Fatalf("update status: %v", err)
		}
		si, err := kc.ServiceImports(ns).Create(ctx, &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Name: "svc"},
			Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, Ports: []mcsv1beta1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}},
			metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		si.Status.Clusters = []mcsv1beta1.ClusterStatus{{Cluster: "east"}}
		if si, err = kc.ServiceImports(ns).UpdateStatus(ctx, si, metav1.UpdateOptions{}); err != nil || len(si.Status.Clusters) != 1 {
			t.Fatalf("import status: %v", err)
		}
		rl, err := kc.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, r := range rl.APIResources {
			names[r.Name] = true
		}
		if !names["serviceexports"] || !names["serviceimports"] {
			t.Fatalf("discovery of %s: %v", mcsv1beta1.GroupVersion, names)
		}
		if _, err := kc.ServerResourcesForGroupVersion("nothing.example.com/v1"); !apierrors.IsNotFound(err) {
			t.Fatalf("discovery of an absent group: %v, want NotFound", err)
		}
		if rl, err := kc.ServerResourcesForGroupVersion("v1"); err != nil || len(rl.APIResources) == 0 {
			t.Fatalf("discovery of core v1: %v", err)
		}
	})

	t.Run("informers feed client-go listers", func(t *testing.T) {
		ictx, cancel := context.WithCancel(ctx)
		defer cancel()
		f := kclient.NewFactory(kc, kc, kclient.FactoryOptions{Namespace: ns,
			Tweak: func(o *metav1.ListOptions) { o.LabelSelector = "watched=yes" }})
		pods, exports := f.Pods(), f.ServiceExports()
		if f.Pods() != pods {
			t.Fatal("the factory made two pod informers")
		}
		adds := make(chan string, 10)
		pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(o any) { adds <- o.(*corev1.Pod).Name }})
		mk := func(name, watched string) {
			if _, err := kc.Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"watched": watched}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		mk("before", "yes")
		f.Start(ictx.Done())
		for typ, ok := range f.WaitForCacheSync(ictx.Done()) {
			if !ok {
				t.Fatalf("%v did not sync", typ)
			}
		}
		mk("after", "yes")
		mk("ignored", "no")
		lister := corelisters.NewPodLister(pods.GetIndexer())
		eventually(t, "pod created after the sync in the lister", func() error {
			l, err := lister.Pods(ns).List(labels.Everything())
			if err != nil {
				return err
			}
			if len(l) != 2 {
				return fmt.Errorf("%d pods cached, want before and after", len(l))
			}
			return nil
		})
		if _, err := lister.Pods(ns).Get("ignored"); !apierrors.IsNotFound(err) {
			t.Fatalf("a pod outside the tweak's selector was cached: %v", err)
		}
		if n := len(exports.GetStore().List()); n != 0 {
			t.Fatalf("%d exports cached, want none (label selector)", n)
		}
		got := map[string]bool{}
		for len(got) < 2 {
			select {
			case n := <-adds:
				got[n] = true
			case <-time.After(30 * time.Second):
				t.Fatalf("add events: %v", got)
			}
		}
		f.Shutdown()
	})

	t.Run("watch", func(t *testing.T) {
		w, err := kc.ConfigMaps(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=watched"})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if _, err := kc.ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "watched"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-w.ResultChan():
			if cm, ok := e.Object.(*corev1.ConfigMap); e.Type != watch.Added || !ok || cm.Name != "watched" {
				t.Fatalf("watch event %v %T", e.Type, e.Object)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no watch event")
		}
	})
}
