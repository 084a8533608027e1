package multinode

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet"
)

// With one Node marked a gateway only the gateway runs the mesh, so it announces the
// other node's claim on that node's behalf: two nodes, each running the real agent binary
// in its namespace (`patronus agent --manage-conflist`), claim their blocks with Leases;
// the gateway's verified mesh state then holds, signed by the gateway, a podblock claim
// for the non-gateway node with the block its Lease and conflist have, counted once per
// node, and `/v1/status` says so. The non-gateway node leaves for good (agent stopped,
// Node deleted): its Lease is released and the claim is withdrawn.
func TestGatewayAnnouncesClaimsOnBehalf(t *testing.T) {
	requireRoot(t)
	c := k8senv.Start(t)
	k := c.Client()
	ctx := context.Background()
	const cluster = "relay-cluster"
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"cluster-id": cluster, "cluster-cidr": "10.244.0.0/16"}}
	if _, err := k.CoreV1().ConfigMaps("kube-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, c, "kube-system")
	const gw, other = "rc-gw", "rc-n2"
	names := []string{gw, other}
	for i, name := range names {
		createNodeObject(t, k, name, netip.AddrFrom4([4]byte{192, 168, 83, byte(11 + i)}))
	}
	// The mark is read by the agents at start.
	n, err := k.CoreV1().Nodes().Get(ctx, gw, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels = map[string]string{nodenet.GatewayLabel: "true"}
	if _, err := k.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	agents := map[string]*relayAgent{}
	for i, name := range names {
		agents[name] = startRelayAgent(t, l, c, name, netip.AddrFrom4([4]byte{192, 168, 83, byte(11 + i)}), cluster)
	}

	blocks := map[string]string{}
	for _, name := range names {
		nn, err := agents[name].api.NodeNet(ctx)
		if err != nil || nn.Source != nodenet.SourceLease || nn.ConfList == "" {
			t.Fatalf("%s nodenet %+v (%v)", name, nn, err)
		}
		blocks[name] = nn.Block
	}
	if blocks[gw] == blocks[other] {
		t.Fatalf("both nodes hold %s", blocks[gw])
	}
	conf, err := os.ReadFile(agents[other].confList)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), `"subnet": "`+blocks[other]+`"`) {
		t.Fatalf("%s conflist does not use %s:\n%s", other, blocks[other], conf)
	}
	leases, err := k.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{LabelSelector: nodenet.LeaseSelector})
	if err != nil {
		t.Fatal(err)
	}
	if got := leaseOf(leases.Items, other); got != blocks[other] {
		t.Fatalf("%s Lease block %q, want %s", other, got, blocks[other])
	}
	st, err := agents[other].api.Status(ctx)
	if err != nil || st.Mesh == nil || st.Mesh.NotGateway == "" {
		t.Fatalf("%s is not a mesh-less node: mesh %+v (%v)", other, st.Mesh, err)
	}

	gwAPI := agents[gw].api
	meshState := func() (mesh.StateResponse, error) {
		var sr mesh.StateResponse
		err := gwAPI.Do(ctx, http.MethodGet, "/v1/mesh", &sr)
		return sr, err
	}
	eventually(t, 90*time.Second, gw+" holds "+other+"'s claim, signed on its behalf", func() error {
		sr, err := meshState()
		if err != nil {
			return err
		}
		var own, onBehalf []announce.Announcement
		for _, a := range sr.Announcements {
			if a.Kind != announce.KindPodBlock {
				continue
			}
			if a.Origin != gw || a.Cluster != cluster {
				return fmt.Errorf("claim from an unexpected origin: %+v", a)
			}
			if a.OnBehalf() {
				onBehalf = append(onBehalf, a)
			} else {
				own = append(own, a)
			}
		}
		if len(own) != 1 || own[0].Prefixes[0].String() != blocks[gw] {
			return fmt.Errorf("own claims %+v, want one of %s", own, blocks[gw])
		}
		if len(onBehalf) != 1 || onBehalf[0].Node != other || onBehalf[0].Prefixes[0].String() != blocks[other] || onBehalf[0].Claimed <= 0 {
			return fmt.Errorf("claims on behalf %+v, want one for %s of %s", onBehalf, other, blocks[other])
		}
		byNode := nodenet.AnnouncedClaims(sr.Announcements, cluster)
		if len(byNode) != 2 || byNode[gw].Block.String() != blocks[gw] || byNode[other].Block.String() != blocks[other] {
			return fmt.Errorf("claims by node %v, want %v", byNode, blocks)
		}
		if r := sr.Rejected[string(announce.ReasonUnauthorisedPrefix)] + sr.Rejected[string(announce.ReasonMalformed)]; r != 0 {
			return fmt.Errorf("the gateway rejected %v announcements (rejections %v)", r, sr.Rejected)
		}
		st, err := gwAPI.Status(ctx)
		if err != nil || st.Mesh == nil || st.Mesh.ClaimsOnBehalf != 1 {
			return fmt.Errorf("gateway /v1/status mesh %+v (%v), want claimsOnBehalf 1", st.Mesh, err)
		}
		return nil
	})

	// The other node leaves for good.
	agents[other].stop()
	if err := k.CoreV1().Nodes().Delete(ctx, other, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, other+"'s Lease released and its claim withdrawn", func() error {
		leases, err := k.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{LabelSelector: nodenet.LeaseSelector})
		if err != nil {
			return err
		}
		if b := leaseOf(leases.Items, other); b != "" {
			return fmt.Errorf("%s still holds the Lease of %s", other, b)
		}
		sr, err := meshState()
		if err != nil {
			return err
		}
		for _, a := range sr.Announcements {
			if a.Kind == announce.KindPodBlock && a.Subject() == other {
				return fmt.Errorf("claim for %s still held: %+v", other, a)
			}
		}
		if _, ok := nodenet.AnnouncedClaims(sr.Announcements, cluster)[gw]; !ok {
			return fmt.Errorf("the gateway's own claim went too: %+v", sr.Announcements)
		}
		st, err := gwAPI.Status(ctx)
		if err != nil || st.Mesh == nil || st.Mesh.ClaimsOnBehalf != 0 {
			return fmt.Errorf("gateway /v1/status mesh %+v (%v), want claimsOnBehalf 0", st.Mesh, err)
		}
		return nil
	})
	t.Logf("blocks %v; %s's claim announced by %s on its behalf, withdrawn when it left", blocks, other, gw)
}

// leaseOf is the block of the Lease node holds ("" none).
func leaseOf(ls []coordinationv1.Lease, node string) string {
	for _, l := range ls {
		if h := l.Spec.HolderIdentity; h != nil && *h == node {
			return l.Annotations[nodenet.AnnotationBlock]
		}
	}
	return ""
}

// relayAgent is the real agent binary running in a lab node's namespace.
type relayAgent struct {
	*node
	api  *localapi.Client
	stop func()
}

// startRelayAgent makes the node namespace and runs `patronus agent --manage-conflist`
// in it as the DaemonSet does (mesh on, multicast beacons on the underlay), until the
// agent is ready; stop ends it (also at cleanup).
func startRelayAgent(t *testing.T, l *lab, c *k8senv.Cluster, name string, addr netip.Addr, cluster string) *relayAgent {
	t.Helper()
	bin := filepath.Join(pluginDir(t), "patronus") // built by pluginDir unless PATRONUS_BIN is set
	if b := os.Getenv("PATRONUS_BIN"); b != "" {
		bin = b
	}
	a := &relayAgent{node: l.makeNode(name, addr)}
	sock := filepath.Join(a.dir, "agent.sock")
	relayAPI(t, a.netns, c.Host())
	cmd := exec.Command("ip", "netns", "exec", a.netns, bin, "agent", "--manage-conflist",
		"--kubeconfig", c.Kubeconfig(), "--database", a.db.Path(), "--socket", sock, "--cni-conflist", a.confList,
		"--metrics-addr", "off", "--enforce-policy=false", "--paths=false", "--probe-respond", "off",
		"--l7-metrics-socket", "off", "--multicast-iface", "eth0", "--beacon-interval", "1s",
		"--mesh-profile", "local", "--mesh-refresh", "2s", "--mesh-reconnect-interval", "1s", "--log-format", "text")
	cmd.Env = append(os.Environ(), "NODE_NAME="+name, "CLUSTER_ID="+cluster)
	w := &tlogWriter{t: t}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	a.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	}
	t.Cleanup(a.stop)
	a.api = localapi.NewClient(sock)
	t.Cleanup(a.api.Close)
	eventually(t, 60*time.Second, name+" agent ready", func() error {
		if stopped {
			return nil
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("%s: agent exited: %v", name, err)
		default:
		}
		return a.api.Ready(context.Background())
	})
	return a
}
