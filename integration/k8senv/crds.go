package k8senv

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallMCSCRDs applies the ServiceExport and ServiceImport CRDs embedded in
// sigs.k8s.io/mcs-api (server-side apply, so calling it twice is harmless) and waits until
// both are Established.
func (c *Cluster) InstallMCSCRDs(ctx context.Context) error {
	return c.ApplyCRDs(ctx, mcscrd.ServiceExportCRD, mcscrd.ServiceImportCRD)
}

// ApplyCRDs applies CustomResourceDefinitions given as YAML documents (one CRD each) and
// waits until every one is Established, so clients can use the new types at once.
func (c *Cluster) ApplyCRDs(ctx context.Context, docs ...[]byte) error {
	dc, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return fmt.Errorf("building dynamic client: %w", err)
	}
	var names []string
	for _, doc := range docs {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			return fmt.Errorf("decoding CRD: %w", err)
		}
		if obj.GetKind() != "CustomResourceDefinition" {
			return fmt.Errorf("ApplyCRDs: got a %q, want a CustomResourceDefinition", obj.GetKind())
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return fmt.Errorf("encoding CRD %s: %w", obj.GetName(), err)
		}
		force := true
		if _, err := dc.Resource(crdGVR).Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "patronus-k8senv", Force: &force}); err != nil {
			return fmt.Errorf("applying CRD %s: %w", obj.GetName(), err)
		}
		names = append(names, obj.GetName())
	}
	return c.WaitCRDsEstablished(ctx, names...)
}

// WaitCRDsEstablished waits until the named CRDs (plural.group) are Established.
func (c *Cluster) WaitCRDsEstablished(ctx context.Context, names ...string) error {
	dc, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return fmt.Errorf("building dynamic client: %w", err)
	}
	for _, name := range names {
		if err := waitEstablished(ctx, dc, name); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, dc dynamic.Interface, name string) error {
	for {
		got, err := dc.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err == nil && crdEstablished(got) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not Established: %w (last error: %v)", name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func crdEstablished(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
