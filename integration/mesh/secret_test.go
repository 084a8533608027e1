package meshtest

import (
	"context"
	"crypto/ed25519"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/mesh/trust"
)

// Agents starting at once against a real API server all end up with one cluster key and
// one gossip key: Create-if-absent through the API server's optimistic concurrency.
func TestSecretKeySourceRealAPIServer(t *testing.T) {
	c := k8senv.Start(t)
	ctx := context.Background()
	const agents = 8
	keys := make([]ed25519.PrivateKey, agents)
	gossip := make([][]byte, agents)
	errs := make([]error, agents)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Go(func() {
			cs, err := kubernetes.NewForConfig(c.RESTConfig())
			if err != nil {
				errs[i] = err
				return
			}
			src := trust.SecretSource{Secrets: cs.CoreV1().Secrets("kube-system")}
			if keys[i], errs[i] = src.ClusterKey(ctx); errs[i] != nil {
				return
			}
			var g [][]byte
			g, errs[i] = src.GossipKeys(ctx)
			if errs[i] == nil {
				gossip[i] = g[0]
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
	}
	for i := 1; i < agents; i++ {
		if !keys[i].Equal(keys[0]) || string(gossip[i]) != string(gossip[0]) {
			t.Fatalf("agent %d got a different key", i)
		}
	}
	sec, err := c.Client().CoreV1().Secrets("kube-system").Get(ctx, trust.ClusterKeySecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data[trust.SecretPublicKey]) != trust.EncodeKey(keys[0].Public().(ed25519.PublicKey)) {
		t.Fatal("Secret's public key does not match the private key agents use")
	}
	// A restarted agent reads the same key.
	k, err := trust.SecretSource{Secrets: c.Client().CoreV1().Secrets("kube-system")}.ClusterKey(ctx)
	if err != nil || !k.Equal(keys[0]) {
		t.Fatalf("restart got another key (%v)", err)
	}
}
