package agent_test

// Two clusters, each with its own API server and one gateway agent (the built binary in a
// namespace of its own on a shared underlay bridge), and a pod namespace behind each
// gateway. Nothing about tunnels is configured beyond the ConfigMap: each agent creates
// its WireGuard key and device, announces its tunnel signed through the mesh, and
// programs peer and routes from the other cluster's verified announcement.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh/trust"
)

type tunnelSide struct {
	cluster, cidr, gwCIDR, pod, podIP string
	n                                 int // host number on the underlay (10.78.0.n)
	key                               ed25519.PrivateKey
	lab                               *meshLab
	agent                             *gwAgent
	podNS                             string
}

// configure writes side s's Secrets (its cluster key, the shared gossip key) and
// ConfigMap (pinning the other side's key, seeding its gossip address) into c.
func (s *tunnelSide) configure(t *testing.T, c *k8senv.Cluster, other *tunnelSide, gossipKey []byte) {
	t.Helper()
	ctx := context.Background()
	secs := c.Client().CoreV1().Secrets(k8senv.PatronusNamespace)
	for name, data := range map[string]map[string][]byte{
		trust.ClusterKeySecret: {trust.SecretPrivateKey: s.key.Seed(), trust.SecretPublicKey: []byte(trust.EncodeKey(s.key.Public().(ed25519.PublicKey)))},
		trust.GossipKeySecret:  {trust.SecretGossipKey: gossipKey},
	} {
		if _, err := secs.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cms := c.Client().CoreV1().ConfigMaps(k8senv.PatronusNamespace)
	cm, err := cms.Get(ctx, "patronus-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["cluster-id"] = s.cluster
	cm.Data["cluster-cidr"] = s.cidr
	delete(cm.Data, "service-cidr")
	cm.Data["remote-clusters"] = fmt.Sprintf("- {id: %s, endpoint: '10.78.0.%d:51820', cidr: %s, gossip: '10.78.0.%d:7946', publicKey: '%s'}",
		other.cluster, other.n, other.cidr, other.n, trust.EncodeKey(other.key.Public().(ed25519.PublicKey)))
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addPod makes a pod namespace behind the gateway's bridge (plain ip, as a CNI bridge
// would): podIP in the cluster CIDR, default route via the gateway's bridge address.
func (s *tunnelSide) addPod(t *testing.T) {
	t.Helper()
	l := s.lab
	s.podNS = fmt.Sprintf("pt-g%s-%dp", l.id, s.n)
	l.ip("netns", "add", s.podNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", s.podNS).Run() })
	gw := s.agent.ns
	l.ip("-n", gw, "link", "add", "brpod", "type", "bridge")
	l.ip("-n", gw, "addr", "add", s.gwCIDR, "dev", "brpod")
	l.ip("-n", gw, "link", "set", "brpod", "up")
	l.ip("-n", gw, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", s.podNS)
	l.ip("-n", gw, "link", "set", "vpod", "master", "brpod", "up")
	if out, err := exec.Command("ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward in %s: %v: %s", gw, err, out)
	}
	l.ip("-n", s.podNS, "link", "set", "lo", "up")
	l.ip("-n", s.podNS, "addr", "add", s.podIP+"/16", "dev", "eth0")
	l.ip("-n", s.podNS, "link", "set", "eth0", "up")
	l.ip("-n", s.podNS, "route", "add", "default", "via", strings.Split(s.gwCIDR, "/")[0])
}

func podPing(from, to string) error {
	out, err := exec.Command("ip", "netns", "exec", from, "ping", "-c", "1", "-W", "1", to).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", to, from, err, out)
	}
	return nil
}

func TestGatewayAgentsBringUpTunnel(t *testing.T) {
	la, ca := newMeshLab(t)
	// Cluster B: its own API server, on the same underlay bridge.
	cb := k8senv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, kubecfgB, err := cb.InstallPatronus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cb.Host())
	if err != nil {
		t.Fatal(err)
	}
	lb := &meshLab{t: t, id: la.id, bridge: la.bridge, bin: la.bin, dir: la.dir, apiHost: u.Host, kubecfg: kubecfgB}

	gossip, err := trust.GenerateGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	keyA, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	a := &tunnelSide{cluster: "cluster-a", cidr: "10.244.0.0/16", gwCIDR: "10.244.0.1/16", podIP: "10.244.0.2", n: 1, key: keyA, lab: la}
	b := &tunnelSide{cluster: "cluster-b", cidr: "10.248.0.0/16", gwCIDR: "10.248.0.1/16", podIP: "10.248.0.2", n: 2, key: keyB, lab: lb}
	a.configure(t, ca, b, gossip)
	b.configure(t, cb, a, gossip)
	// Peers come from remote-clusters (gossip seeds), not beacons.
	// The gateway namespaces also hold the pod bridge: the underlay address is given, and
	// the WireGuard endpoint announced is taken from it (--wg-endpoint's default).
	a.agent = la.addAgent(1, "--no-beacons", "--gossip-advertise", "10.78.0.1:7946")
	b.agent = lb.addAgent(2, "--no-beacons", "--gossip-advertise", "10.78.0.2:7946")
	a.addPod(t)
	b.addPod(t)

	tunnelsOf := func(s *tunnelSide) (tunnel.Status, error) {
		var st tunnel.Status
		if err := s.agent.alive(); err != nil {
			return st, err
		}
		out, err := la.cliStdout("keys", "show", "--socket", s.agent.socket, "-o", "json")
		if err != nil {
			return st, fmt.Errorf("patronus keys show: %v: %s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return st, fmt.Errorf("keys show -o json: %v: %s", err, out)
		}
		return st, nil
	}
	hasTunnel := func(s *tunnelSide, to *tunnelSide) func() error {
		return func() error {
			st, err := tunnelsOf(s)
			if err != nil {
				return err
			}
			for _, tu := range st.Tunnels {
				if tu.Cluster == to.cluster && tu.Endpoint.String() == fmt.Sprintf("10.78.0.%d:51820", to.n) {
					if len(st.Conditions) != 0 {
						return fmt.Errorf("conditions: %+v", st.Conditions)
					}
					return nil
				}
			}
			return fmt.Errorf("%s: no tunnel to %s yet: %+v", s.cluster, to.cluster, st)
		}
	}
	waitFor(t, 90*time.Second, "A's agent has a tunnel to B", hasTunnel(a, b))
	waitFor(t, 30*time.Second, "B's agent has a tunnel to A", hasTunnel(b, a))
	waitFor(t, 30*time.Second, "pod A pings pod B", func() error { return podPing(a.podNS, b.podIP) })
	if err := podPing(b.podNS, a.podIP); err != nil {
		t.Fatal(err)
	}

	// patronus status on gateway A shows the active tunnel (the seed's line).
	out, _ := la.cliStdout("status", "--socket", a.agent.socket)
	if !strings.Contains(out, "Active tunnels: 1 (cluster-b)") {
		t.Errorf("patronus status on gateway A lacks the tunnel to cluster-b:\n%s", out)
	}
	js, _ := la.cliStdout("status", "--socket", a.agent.socket, "-o", "json")
	var st struct {
		Agent *struct {
			Live *localapi.Status `json:"live"`
		} `json:"agent"`
	}
	if err := json.Unmarshal([]byte(js), &st); err != nil || st.Agent == nil || st.Agent.Live == nil || len(st.Agent.Live.Tunnels) != 1 ||
		st.Agent.Live.Tunnels[0].Cluster != "cluster-b" || !st.Agent.Live.Tunnels[0].Up || st.Agent.Live.Tunnels[0].Interface == "" {
		t.Errorf("patronus status -o json: live tunnels not [cluster-b up]: %v\n%s", err, js)
	}

	// `patronus keys rotate` on gateway B: A learns B's new key through the mesh and the
	// pods still reach each other.
	out, err = la.cliStdout("keys", "rotate", "--socket", b.agent.socket, "-o", "json")
	if err != nil {
		t.Fatalf("patronus keys rotate: %v: %s", err, out)
	}
	var rr tunnel.RotateResult
	if err := json.Unmarshal([]byte(out), &rr); err != nil || rr.PublicKey == "" || rr.PublicKey == rr.PreviousPublicKey {
		t.Fatalf("keys rotate -o json: %v: %s", err, out)
	}
	waitFor(t, 30*time.Second, "A uses B's rotated key", func() error {
		st, err := tunnelsOf(a)
		if err != nil {
			return err
		}
		if len(st.Tunnels) != 1 || st.Tunnels[0].PublicKey != rr.PublicKey {
			return fmt.Errorf("A's tunnels %+v, want B's key %s", st.Tunnels, rr.PublicKey)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "pod A pings pod B after B's key rotation", func() error { return podPing(a.podNS, b.podIP) })

	// Gateway A's agent restarts: same key (node database), tunnel and pod path back.
	before, err := tunnelsOf(a)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	la.stop(a.agent)
	la.start(a.agent)
	waitFor(t, 60*time.Second, "restarted A has its tunnel to B", hasTunnel(a, b))
	if st, _ := tunnelsOf(a); st.PublicKey != before.PublicKey {
		t.Errorf("restarted agent changed its WireGuard key %s → %s", before.PublicKey, st.PublicKey)
	}
	waitFor(t, 30*time.Second, "pod A pings pod B after A's restart", func() error { return podPing(a.podNS, b.podIP) })
	t.Logf("gateway agent A restart (SIGTERM → pod A's ping to B answered): %v", time.Since(t0).Round(time.Millisecond))

	// Gateway B gone without leaving: its announcements expire, A withdraws peer and route.
	lb.kill(b.agent)
	t1 := time.Now()
	waitFor(t, 60*time.Second, "A withdraws cluster B", func() error {
		st, err := tunnelsOf(a)
		if err != nil {
			return err
		}
		if len(st.Tunnels) != 0 {
			return fmt.Errorf("tunnels still %+v", st.Tunnels)
		}
		out, err := exec.Command("ip", "-n", a.agent.ns, "route", "show", "proto", "77").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			return fmt.Errorf("routes proto 77 still: %v %s", err, out)
		}
		return nil
	})
	t.Logf("gateway agent B killed → A withdrew peer and route after %v", time.Since(t1).Round(time.Millisecond))
}
