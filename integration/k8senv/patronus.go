package k8senv

import (
	"context"
	"fmt"
	"path/filepath"

	"k8s.io/client-go/rest"
)

// Names the Patronus manifests create (docs/CONTRACT.md).
const (
	PatronusNamespace      = "kube-system"
	PatronusServiceAccount = "patronus"
)

// ModuleRoot returns the directory of the Patronus module (the one holding go.mod),
// found by walking up from the working directory.
func ModuleRoot() (string, error) { return moduleRoot() }

// ApplyManifests applies files or directories of YAML with kubectl server-side apply, as a
// user installing Patronus would, and returns kubectl's output.
func (c *Cluster) ApplyManifests(paths ...string) (string, error) {
	args := []string{"apply", "--server-side", "--field-manager=patronus-install"}
	for _, p := range paths {
		args = append(args, "-f", p)
	}
	return c.Kubectl(args...)
}

// InstallPatronus applies the module's manifests/ directory (CRDs, ServiceAccount, RBAC,
// ConfigMap, DaemonSet; no pod runs, as there is no kubelet), waits for the MCS CRDs to be
// Established, and returns credentials of the patronus ServiceAccount (a TokenRequest
// token, not an admin certificate): a client configuration and a kubeconfig path. Run the
// agent with these to prove the RBAC rules are enough.
func (c *Cluster) InstallPatronus(ctx context.Context) (*rest.Config, string, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, "", err
	}
	if out, err := c.ApplyManifests(filepath.Join(root, "manifests")); err != nil {
		return nil, "", fmt.Errorf("applying manifests: %w\n%s", err, out)
	}
	if err := c.WaitCRDsEstablished(ctx, "serviceexports.multicluster.x-k8s.io", "serviceimports.multicluster.x-k8s.io"); err != nil {
		return nil, "", err
	}
	return c.ServiceAccountKubeconfig(ctx, PatronusNamespace, PatronusServiceAccount)
}
