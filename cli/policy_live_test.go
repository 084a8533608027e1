package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/policy"
)

// TestPolicyLiveCluster runs `policy matrix` and `policy trace` against a real API server
// holding the backend-policy demo objects, and checks they agree with the files.
func TestPolicyLiveCluster(t *testing.T) {
	c := k8senv.Start(t) // skips in -short mode; needs etcd and kube-apiserver (see k8senv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := policy.LoadDir(backendDir)
	if err != nil {
		t.Fatal(err)
	}
	client := c.Client()
	for _, p := range l.Input.Pods {
		status := p.Status
		p.ResourceVersion = ""
		if len(p.Spec.Containers) == 0 {
			p.Spec.Containers = []corev1.Container{{Name: "c", Image: "busybox"}}
		}
		created, err := client.CoreV1().Pods(p.Namespace).Create(ctx, &p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
		// No kubelet here: set the address the way a kubelet would report it.
		created.Status = status
		if len(created.Status.PodIPs) == 0 {
			created.Status.PodIPs = []corev1.PodIP{{IP: status.PodIP}}
		}
		if _, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set status of pod %s: %v", p.Name, err)
		}
	}
	for _, np := range l.Input.Policies {
		if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, &np, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create policy %s: %v", np.Name, err)
		}
	}

	code, live, errOut := runCLI(t, "policy", "matrix", "--kubeconfig", c.Kubeconfig(), "--ports", "8080,5432", "-o", "json")
	if code != 0 {
		t.Fatalf("live matrix: exit %d: %s", code, errOut)
	}
	code, files, errOut := runCLI(t, "policy", "matrix", "--from", backendDir, "--ports", "8080,5432", "-o", "json")
	if code != 0 {
		t.Fatalf("file matrix: exit %d: %s", code, errOut)
	}
	if live != files {
		t.Errorf("live cluster and files disagree:\nlive:  %s\nfiles: %s", live, files)
	}

	// KUBECONFIG from the environment, as kubectl users expect.
	var out, errb strings.Builder
	code = run([]string{"policy", "trace", "--from", "default/database", "--to", "default/backend", "--port", "8080"},
		env{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), getenv: func(k string) string {
			if k == "KUBECONFIG" {
				return c.Kubeconfig()
			}
			return ""
		}})
	if code != 0 || !strings.Contains(out.String(), "isolated by default/backend-policy; no rule allows from pod default/database") {
		t.Errorf("live trace: exit %d\n%s%s", code, out.String(), errb.String())
	}
}
