package agent

import (
	"context"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/kube"
)

// TestPathsOnlyOnGateways: a node that routes remote clusters through its gateway does not
// probe the paths (it cannot reach the remote endpoints and would report every path down);
// the gateway does.
func TestPathsOnlyOnGateways(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gw", Labels: map[string]string{GatewayLabel: "true"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker"}},
	)
	// No cidr for the remote cluster: with one, the gateway would program the pod
	// bandwidth meter (nftables) in the namespace the test runs in, the host's.
	cfg := &config.Config{ClusterID: "a", RemoteClusters: []config.RemoteCluster{
		{ID: "b", Endpoint: "127.0.0.1:51820"}}}
	for _, tc := range []struct {
		node string
		want bool
	}{{"gw", true}, {"worker", false}} {
		t.Run(tc.node, func(t *testing.T) {
			a := &agent{opts: Options{NodeName: tc.node, Mesh: &MeshOptions{}, Registry: prometheus.NewRegistry(),
				Paths: &PathsOptions{ResponderAddr: "off", MetricsSocket: "off"}}.withDefaults(),
				clients: &kube.Clients{Kube: kfake.Kube(cs)}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), seen: newSeenSets()}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			a.startPaths(ctx, cfg, &wg)
			got := a.pathsSvc.Load() != nil
			cancel()
			wg.Wait()
			if got != tc.want {
				t.Fatalf("node %s: path monitoring running %v, want %v", tc.node, got, tc.want)
			}
		})
	}
}
