package agent_test

// Gateway agents of one cluster, each `patronus agent` (the built binary) in a network
// namespace of its own on a bridge in another namespace, with one real API server and the
// shipped manifests (the agents use the patronus ServiceAccount's token). Nothing about
// peers is configured: they find each other by multicast beacons, and the cluster key is
// the Secret the first of them created.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
)

// meshLab is the LAN: a bridge namespace, one namespace per agent, and in each agent
// namespace a forwarder from 127.0.0.1:<API port> to the API server in the root namespace
// (the agent's kubeconfig then works unchanged inside the namespace).
type meshLab struct {
	t       *testing.T
	id      string
	bridge  string
	bin     string
	dir     string
	apiHost string // host:port of the API server (root namespace loopback)
	kubecfg string // the patronus ServiceAccount's kubeconfig
}

type gwAgent struct {
	name, ns, dir, socket, db, hookFile string
	extra                               []string // more agent flags
	cmd                                 *exec.Cmd
	out                                 *safeBuffer
	exited                              chan error
}

func newMeshLab(t *testing.T) (*meshLab, *k8senv.Cluster) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and a bridge (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip (iproute2) not installed: %v", err)
	}
	bin := patronusBin(t)
	c := k8senv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, kubecfg, err := c.InstallPatronus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(c.Host())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	l := &meshLab{t: t, id: hex.EncodeToString(b), bin: bin, dir: nodeDir(t), apiHost: u.Host, kubecfg: kubecfg}
	l.bridge = "pt-gb-" + l.id
	l.ip("netns", "add", l.bridge)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.bridge).Run() })
	l.ip("-n", l.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.bridge, "link", "set", "br0", "up")
	return l, c
}

func (l *meshLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// host makes namespace n on the bridge (10.78.0.n/24 on eth0) with the API forwarder.
func (l *meshLab) host(n int) string {
	name := fmt.Sprintf("pt-g%s-%d", l.id, n)
	l.ip("netns", "add", name)
	l.t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	port := fmt.Sprintf("p%d", n)
	l.ip("-n", l.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
	l.ip("-n", l.bridge, "link", "set", port, "master", "br0", "multicast", "on", "up")
	l.ip("-n", name, "link", "set", "lo", "up")
	l.ip("-n", name, "link", "set", "eth0", "multicast", "on", "up")
	l.ip("-n", name, "addr", "add", fmt.Sprintf("10.78.0.%d/24", n), "dev", "eth0")
	l.forwardAPI(name)
	return name
}

// forwardAPI listens on the API server's loopback address inside namespace name and
// relays each connection to the real one (dialled from the root namespace: only the
// listening socket belongs to the agent's namespace).
func (l *meshLab) forwardAPI(name string) {
	netns, err := ns.GetNS("/var/run/netns/" + name)
	if err != nil {
		l.t.Fatal(err)
	}
	defer netns.Close()
	var ln net.Listener
	if err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", l.apiHost)
		return err
	}); err != nil {
		l.t.Fatalf("API forwarder in %s: %v", name, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.DialTimeout("tcp", l.apiHost, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				var wg sync.WaitGroup
				wg.Go(func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() })
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				wg.Wait()
			}()
		}
	}()
}

// addAgent creates namespace n and runs an agent there.
func (l *meshLab) addAgent(n int, extra ...string) *gwAgent {
	name := fmt.Sprintf("gw-%d", n)
	dir := filepath.Join(l.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	a := &gwAgent{name: name, ns: l.host(n), dir: dir, socket: filepath.Join(dir, "agent.sock"),
		db: filepath.Join(dir, "k8s-sdwan.db"), hookFile: filepath.Join(dir, "hook.out"), extra: extra}
	l.start(a)
	l.t.Cleanup(func() {
		l.kill(a)
		if l.t.Failed() {
			l.t.Logf("--- %s output ---\n%s", a.name, tail(a.out.String(), 60))
		}
	})
	return a
}

func (l *meshLab) start(a *gwAgent) {
	args := []string{"netns", "exec", a.ns, l.bin, "agent",
		"--kubeconfig", l.kubecfg, "--node-name", a.name, "--database", a.db, "--socket", a.socket,
		"--cni-conflist", filepath.Join(a.dir, "none.conflist"), "--enforce-policy=false",
		"--l7-metrics-socket", filepath.Join(a.dir, "metrics.sock"), "--multicast-iface", "eth0", "--beacon-interval", "1s", "--mesh-profile", "local",
		"--mesh-refresh", "2s", "--mesh-reconnect-interval", "2s", "--log-format", "text",
		"--event-handler", `user:ping={ env | grep ^SERF_ | sort; echo ---; cat; } > ` + a.hookFile + `.tmp && mv ` + a.hookFile + `.tmp ` + a.hookFile,
	}
	args = append(args, a.extra...)
	if a.out == nil {
		a.out = &safeBuffer{}
	}
	a.cmd = exec.Command("ip", args...)
	a.cmd.Env = append(os.Environ(), "NODE_NAME="+a.name)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", a.name, err)
	}
	a.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, ch chan error) { ch <- cmd.Wait() }(a.cmd, a.exited)
}

// stop ends the agent with SIGTERM (it leaves the mesh and saves its state).
func (l *meshLab) stop(a *gwAgent) {
	l.t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		l.t.Errorf("%s did not stop within 30s of SIGTERM", a.name)
		a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
}

func (l *meshLab) kill(a *gwAgent) {
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Kill()
	<-a.exited
	a.cmd = nil
}

func (l *meshLab) cli(args ...string) (string, error) {
	out, err := exec.Command(l.bin, args...).CombinedOutput()
	return string(out), err
}

// cliStdout runs the CLI and returns its stdout alone (status -o json exits 1 when a
// check fails, which the CNI lines do here: no plugin is installed).
func (l *meshLab) cliStdout(args ...string) (string, error) {
	out, err := exec.Command(l.bin, args...).Output()
	return string(out), err
}

func (l *meshLab) members(a *gwAgent) ([]mesh.Member, error) {
	out, err := l.cli("members", "--socket", a.socket, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("patronus members: %v: %s", err, out)
	}
	var ms []mesh.Member
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		return nil, fmt.Errorf("patronus members -o json: %v: %s", err, out)
	}
	return ms, nil
}

// allAlive checks that a lists exactly names, alive, with the cluster's tags.
func allAlive(ms []mesh.Member, cluster string, names ...string) error {
	if len(ms) != len(names) {
		return fmt.Errorf("%d members, want %d: %+v", len(ms), len(names), ms)
	}
	for i, m := range ms {
		if m.Name != names[i] || m.Status != "alive" || m.Cluster != cluster {
			return fmt.Errorf("member %d: %s %s cluster %q, want %s alive in %s", i, m.Name, m.Status, m.Cluster, names[i], cluster)
		}
		if m.Tags[mesh.TagRole] != "gateway" || m.Tags[mesh.TagPodCIDRs] != "10.244.0.0/16" || m.Tags[mesh.TagVersion] == "" {
			return fmt.Errorf("member %s tags %v: want role gateway, pods 10.244.0.0/16, a version", m.Name, m.Tags)
		}
	}
	return nil
}

func (a *gwAgent) alive() error {
	select {
	case err := <-a.exited:
		a.exited <- err
		return errPermanent{fmt.Errorf("%s exited: %v", a.name, err)}
	default:
		return nil
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The cluster id and CIDRs of manifests/04-configmap.yaml.
const shippedCluster = "prod-us-west"

func TestGatewayAgentsFormMesh(t *testing.T) {
	l, c := newMeshLab(t)
	agents := []*gwAgent{l.addAgent(1), l.addAgent(2), l.addAgent(3)}
	names := []string{"gw-1", "gw-2", "gw-3"}

	for _, a := range agents {
		waitFor(t, 90*time.Second, "every agent sees all three alive via "+a.name, func() error {
			if err := a.alive(); err != nil {
				return err
			}
			ms, err := l.members(a)
			if err != nil {
				return err
			}
			return allAlive(ms, shippedCluster, names...)
		})
	}

	// One cluster key for all: the Secret exists once and every agent's certificate (in
	// its member tags) verifies against its public key.
	sec, err := c.Client().CoreV1().Secrets(k8senv.PatronusNamespace).Get(context.Background(), trust.ClusterKeySecret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("cluster key Secret: %v", err)
	}
	pub, err := trust.ParsePublicKey(string(sec.Data[trust.SecretPublicKey]))
	if err != nil {
		t.Fatalf("Secret's public key: %v", err)
	}
	ms, err := l.members(agents[0])
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: shippedCluster, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		cert, err := trust.ParseTagValue(m.Cluster, m.Name, m.Tags[mesh.TagCert])
		if err != nil {
			t.Fatalf("%s cert tag: %v", m.Name, err)
		}
		if err := v.Verify(cert, time.Now()); err != nil {
			t.Errorf("%s's certificate is not signed by the Secret's cluster key: %v", m.Name, err)
		}
	}
	if _, err := c.Client().CoreV1().Secrets(k8senv.PatronusNamespace).Get(context.Background(), trust.GossipKeySecret, metav1.GetOptions{}); err != nil {
		t.Errorf("gossip key Secret: %v", err)
	}

	// Every agent accepted the others' signed prefix announcements (pod and service CIDR).
	for _, a := range agents {
		waitFor(t, 30*time.Second, a.name+" holds every agent's announcement", func() error {
			out, err := l.cliStdout("status", "--socket", a.socket, "--database", a.db, "-o", "json")
			var st struct {
				Agent struct {
					Live struct {
						Mesh *struct {
							Running        bool
							Members, Alive int
							Announcements  int
						}
					}
				}
			}
			if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
				return fmt.Errorf("status -o json: %v (%v): %s", jerr, err, out)
			}
			m := st.Agent.Live.Mesh
			if m == nil || !m.Running || m.Members != 3 || m.Alive != 3 || m.Announcements < 3 {
				return fmt.Errorf("mesh status %+v", m)
			}
			return nil
		})
	}

	// A user event sent through gw-1's socket runs gw-3's handler script.
	if out, err := l.cli("event", "--socket", agents[0].socket, "ping", "hello-from-gw-1"); err != nil {
		t.Fatalf("patronus event: %v: %s", err, out)
	}
	waitFor(t, 20*time.Second, "gw-3's event handler ran", func() error {
		b, err := os.ReadFile(agents[2].hookFile)
		if err != nil {
			return err
		}
		s := string(b)
		for _, want := range []string{"SERF_EVENT=user", "SERF_USER_EVENT=ping", "SERF_SELF_NAME=gw-3", "hello-from-gw-1"} {
			if !strings.Contains(s, want) {
				return fmt.Errorf("handler output lacks %q:\n%s", want, s)
			}
		}
		return nil
	})
}

// The mesh state survives a restart: while the agent is down `patronus status` shows the
// members and announcements it saved, and after the restart it rejoins.
func TestGatewayAgentMeshStateSurvivesRestart(t *testing.T) {
	l, _ := newMeshLab(t)
	a1, a2 := l.addAgent(1), l.addAgent(2)
	for _, a := range []*gwAgent{a1, a2} {
		waitFor(t, 90*time.Second, "both alive via "+a.name, func() error {
			if err := a.alive(); err != nil {
				return err
			}
			ms, err := l.members(a)
			if err != nil {
				return err
			}
			return allAlive(ms, shippedCluster, "gw-1", "gw-2")
		})
	}
	// Announcements are persisted when they change; wait until a2 saw both agents' (each
	// announces its prefixes and, with the tunnel on, its WireGuard key: 4 in all).
	waitFor(t, 30*time.Second, "gw-2 accepted both agents' announcements", func() error {
		out, err := l.cli("status", "--socket", a2.socket, "--database", a2.db)
		if !strings.Contains(out, "Mesh: 2 members (2 alive), 4 announcements accepted") {
			return fmt.Errorf("status (%v):\n%s", err, out)
		}
		return nil
	})

	l.stop(a2)
	out, err := l.cli("status", "--socket", a2.socket, "--database", a2.db)
	if err == nil {
		t.Errorf("status exit 0 with the agent down:\n%s", out)
	}
	if !strings.Contains(out, "announcements accepted (saved by the agent at ") || !strings.Contains(out, "Mesh: 2 members") {
		t.Fatalf("status while the agent is down does not show the saved mesh state:\n%s", out)
	}
	t.Logf("status while down:\n%s", out)

	l.start(a2)
	for _, a := range []*gwAgent{a1, a2} {
		waitFor(t, 90*time.Second, "rejoined, via "+a.name, func() error {
			if err := a.alive(); err != nil {
				return err
			}
			ms, err := l.members(a)
			if err != nil {
				return err
			}
			return allAlive(ms, shippedCluster, "gw-1", "gw-2")
		})
	}
}

// With one Node marked patronus.io/gateway=true, only its agent joins the mesh; the
// other's status says why it has none and its mesh API answers 503.
func TestOnlyMarkedGatewaysRunMesh(t *testing.T) {
	l, c := newMeshLab(t)
	ctx := context.Background()
	for name, labels := range map[string]map[string]string{"gw-1": {"patronus.io/gateway": "true"}, "gw-2": nil} {
		if _, err := c.Client().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a1, a2 := l.addAgent(1), l.addAgent(2)
	waitFor(t, 90*time.Second, "gw-2 reports it is not a gateway", func() error {
		if err := a2.alive(); err != nil {
			return err
		}
		out, _ := l.cli("status", "--socket", a2.socket, "--database", a2.db)
		if !strings.Contains(out, "Mesh: not a gateway node (1 Node(s) are marked patronus.io/gateway=true and this one is not)") {
			return fmt.Errorf("status:\n%s", out)
		}
		return nil
	})
	if out, err := l.cli("members", "--socket", a2.socket); err == nil {
		t.Errorf("members through a non-gateway agent succeeded:\n%s", out)
	}
	// gw-1 beacons for a while; gw-2 never shows up.
	waitFor(t, 60*time.Second, "gw-1 alone in the mesh", func() error {
		if err := a1.alive(); err != nil {
			return err
		}
		ms, err := l.members(a1)
		if err != nil {
			return err
		}
		return allAlive(ms, shippedCluster, "gw-1")
	})
	time.Sleep(3 * time.Second) // three beacon intervals
	ms, err := l.members(a1)
	if err != nil {
		t.Fatal(err)
	}
	if err := allAlive(ms, shippedCluster, "gw-1"); err != nil {
		t.Fatalf("after 3s: %v", err)
	}
}

// inNS fetches http://addr/path from inside namespace name (the socket is made there; the
// agent's metrics listener is on the namespace's loopback).
func inNSGet(name, addr, path string) (string, error) {
	netns, err := ns.GetNS("/var/run/netns/" + name)
	if err != nil {
		return "", err
	}
	defer netns.Close()
	var c net.Conn
	if err := netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: agent\r\n\r\n", path)
	b, err := io.ReadAll(c)
	return string(b), err
}

// Two gateways whose ConfigMap lists a remote cluster with two endpoints (both agents'
// addresses on the LAN): each agent probes both paths against the responders the agents
// run, `patronus paths` through its socket shows them up with a latency, and the path
// score metric is on the agent's /metrics.
func TestGatewayAgentProbesRemotePaths(t *testing.T) {
	l, c := newMeshLab(t)
	ctx := context.Background()
	cms := c.Client().CoreV1().ConfigMaps(k8senv.PatronusNamespace)
	cm, err := cms.Get(ctx, "patronus-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["remote-clusters"] = "- {id: west, endpoint: '10.78.0.2:51820', cidr: 10.248.0.0/16, paths: ['10.78.0.1:51820']}"
	cm.Data["probe-interval"] = "100ms"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a1 := l.addAgent(1, "--metrics-addr", "127.0.0.1:9476")
	l.addAgent(2, "--metrics-addr", "127.0.0.1:9476")

	waitFor(t, 90*time.Second, "both paths up in gw-1's patronus paths", func() error {
		if err := a1.alive(); err != nil {
			return err
		}
		out, err := l.cliStdout("paths", "--socket", a1.socket, "-o", "json")
		if err != nil {
			return fmt.Errorf("patronus paths: %v: %s", err, out)
		}
		var snap struct {
			Paths []struct {
				ID        string  `json:"path_id"`
				Dst       string  `json:"dst"`
				State     string  `json:"state"`
				LatencyMs float64 `json:"latency_ms"`
				Sent      uint64  `json:"probes_sent"`
			} `json:"paths"`
		}
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			// The CLI may print a bare list; accept both shapes.
			if err2 := json.Unmarshal([]byte(out), &snap.Paths); err2 != nil {
				return fmt.Errorf("paths -o json: %v: %s", err, out)
			}
		}
		if len(snap.Paths) != 2 {
			return fmt.Errorf("%d paths, want 2: %s", len(snap.Paths), out)
		}
		for _, p := range snap.Paths {
			if p.Dst != "west" || p.State != "up" || p.LatencyMs <= 0 || p.Sent == 0 {
				return fmt.Errorf("path %+v not up with a latency", p)
			}
		}
		return nil
	})
	out, err := inNSGet(a1.ns, "127.0.0.1:9476", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`patronus_path_score{dst="west",path_id="west/10.78.0.2"`, `patronus_path_score{dst="west",path_id="west/10.78.0.1"`, "patronus_mesh_announcements_accepted_total"} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", out)
	}
}
