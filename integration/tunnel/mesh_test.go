package tunneltest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
)

// gatewayEnv carries a gatewayConfig to the re-executed test binary.
const gatewayEnv = "PATRONUS_TUNNEL_TEST_GATEWAY"

// gatewayConfig is what a gateway process needs: in production the agent gets the same
// from its ConfigMap, Secrets and node database.
type gatewayConfig struct {
	Cluster    string
	ClusterKey []byte // Ed25519 private key of the local cluster
	Remote     string
	RemotePub  []byte
	RemoteCIDR string
	PodCIDR    string
	Underlay   string
	Seeds      []string
	Socket     string
	Rotation   time.Duration
	StateFile  string // stands in for the node database (key and mesh state survive a restart)
}

// fileKV is a JSON file standing in for the node database's kv table.
type fileKV struct{ path string }

func (f fileKV) load() map[string]string {
	m := map[string]string{}
	if b, err := os.ReadFile(f.path); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

func (f fileKV) Get(_ context.Context, k string) (string, bool, error) {
	v, ok := f.load()[k]
	return v, ok, nil
}

func (f fileKV) Set(_ context.Context, k, v string) error {
	m := f.load()
	m[k] = v
	b, _ := json.Marshal(m)
	return os.WriteFile(f.path, b, 0o600)
}

func TestMain(m *testing.M) {
	if c := os.Getenv(gatewayEnv); c != "" {
		if err := runGateway(c); err != nil {
			fmt.Fprintln(os.Stderr, "gateway:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runGateway is a minimal gateway agent, run inside its gateway namespace by
// `ip netns exec`: mesh node (signed announcements over serf), WireGuard device, routes,
// tunnel reconciler driven by the verified mesh state, key rotator, and the two local API
// endpoints on a unix socket. It is the wiring the agent needs (see the report).
func runGateway(js string) error {
	var c gatewayConfig
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("cluster", c.Cluster)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	podCIDR := netip.MustParsePrefix(c.PodCIDR)
	remoteCIDR := netip.MustParsePrefix(c.RemoteCIDR)
	node := c.Cluster + "-gw"
	id, err := trust.NewIdentity(c.Cluster, ed25519.PrivateKey(c.ClusterKey), node, time.Now(), time.Hour)
	if err != nil {
		return err
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: c.Cluster, PublicKey: ed25519.PrivateKey(c.ClusterKey).Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{podCIDR}},
		trust.Cluster{ID: c.Remote, PublicKey: ed25519.PublicKey(c.RemotePub), CIDRs: []netip.Prefix{remoteCIDR}})
	if err != nil {
		return err
	}
	kv := fileKV{c.StateFile}
	key, created, err := tunnel.LoadOrCreateKey(ctx, kv, time.Now())
	if err != nil {
		return err
	}
	spec := wg.Spec{Name: wg.InterfaceName(c.Cluster), ListenPort: wg.DefaultPort, PrivateKey: key, MTU: 1500 - wg.Overhead}
	dev, err := wg.Open(wg.Options{Logger: log}, spec)
	if err != nil {
		return err
	}
	defer dev.Close()
	n, err := mesh.New(mesh.Options{NodeName: node, ClusterID: c.Cluster, Identity: id, Verifier: v,
		BindAddr: c.Underlay, BindPort: mesh.DefaultGossipPort, Seeds: c.Seeds, DisableBeacons: true, Profile: "local",
		Refresh: time.Second, TTL: 3 * time.Second, ReconnectInterval: time.Second,
		Tags: mesh.Tags{Role: "gateway", WireGuardKey: key.PublicKey().String()}, Store: kv, Logger: log.With("part", "mesh")})
	if err != nil {
		return err
	}
	k, err := route.NewNetlinkKernel("")
	if err != nil {
		return err
	}
	defer k.Close()
	events, err := k.Subscribe(ctx.Done())
	if err != nil {
		return err
	}
	router := route.NewRouter(route.Options{Kernel: k, Events: events, Logger: log})
	rec := tunnel.NewReconciler(tunnel.ReconcilerOptions{Device: dev, Routes: router, Logger: log,
		MSS: func(devs []string) error { return wg.EnsureMSSClamp("", devs) }})
	rot := tunnel.NewRotator(tunnel.RotatorOptions{Device: dev, Spec: spec, CreatedAt: created, Store: kv, Announce: n.Announce,
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(c.Underlay), wg.DefaultPort)},
		PodCIDRs:  []netip.Prefix{podCIDR}, Interval: c.Rotation, Logger: log})
	if err := rot.Announce(); err != nil {
		return err
	}
	hints := []tunnel.Hint{{Cluster: c.Remote, CIDRs: []netip.Prefix{remoteCIDR}}}
	base := func() tunnel.Input {
		return tunnel.Input{LocalCluster: c.Cluster, Gateway: true, Hints: hints, Keepalive: tunnel.DefaultKeepalive} // as the agent
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+tunnel.PathTunnels, rec.ServeTunnels)
	mux.HandleFunc("POST "+tunnel.PathKeysRotate, rot.ServeRotate)
	_ = os.Remove(c.Socket) // left by the previous run of this gateway
	ln, err := net.Listen("unix", c.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	go router.Run(ctx)
	go rec.Run(ctx, n.State(), base, 50*time.Millisecond, 10*time.Second)
	go rot.Run(ctx)
	return n.Run(ctx)
}

type gatewayProc struct {
	cmd    *exec.Cmd
	socket string
	log    *bytes.Buffer
	api    *localapi.Client
}

func startGateway(t *testing.T, s *side, c gatewayConfig) *gatewayProc {
	t.Helper()
	js, _ := json.Marshal(c)
	cmd := exec.Command("ip", "netns", "exec", s.gwName, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), gatewayEnv+"="+string(js))
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	must(t, cmd.Start())
	g := &gatewayProc{cmd: cmd, socket: c.Socket, log: &log, api: localapi.NewClient(c.Socket)}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("gateway %s log:\n%s", s.cluster, tail(log.String(), 40))
		}
	})
	return g
}

func (g *gatewayProc) tunnels(ctx context.Context) (tunnel.Status, error) {
	var st tunnel.Status
	err := g.api.Do(ctx, http.MethodGet, tunnel.PathTunnels, &st)
	return st, err
}

func mustStatus(t *testing.T, ctx context.Context, g *gatewayProc) tunnel.Status {
	t.Helper()
	st, err := g.tunnels(ctx)
	must(t, err)
	return st
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The full path: a gateway process per cluster (mesh node + tunnel dataplane) in its
// namespace. Signed tunnel announcements cross the underlay by gossip and drive both
// reconcilers; a key rotation requested through the local API is announced and picked up
// by the other side under a running stream; a gateway that dies without leaving has its
// announcements expire, and the other side withdraws routes and peer.
func TestMeshDrivenTunnel(t *testing.T) {
	a, b := newTopology(t)
	keyA, err := trust.GenerateClusterKey()
	must(t, err)
	keyB, err := trust.GenerateClusterKey()
	must(t, err)
	dir := t.TempDir()
	cfgA := gatewayConfig{Cluster: a.cluster, ClusterKey: keyA, Remote: b.cluster, RemotePub: keyB.Public().(ed25519.PublicKey),
		RemoteCIDR: b.podCIDR.String(), PodCIDR: a.podCIDR.String(), Underlay: a.underlay.String(),
		// Both sides seed each other, as remote-clusters does in production: a restarted
		// gateway rejoins at once instead of waiting for the other side's 30 s retry.
		Seeds: []string{net.JoinHostPort(b.underlay.String(), "7946")}, Socket: filepath.Join(dir, "a.sock"), Rotation: time.Hour, StateFile: filepath.Join(dir, "a.json")}
	ga := startGateway(t, a, cfgA)
	// B joins through A's gossip address: A must listen first (a failed join is retried
	// only every 30 s). A's local API answers once its mesh node listens.
	eventually(t, 20*time.Second, "gateway A serving", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := ga.tunnels(ctx)
		return err
	})
	gb := startGateway(t, b, gatewayConfig{Cluster: b.cluster, ClusterKey: keyB, Remote: a.cluster, RemotePub: keyA.Public().(ed25519.PublicKey),
		RemoteCIDR: a.podCIDR.String(), PodCIDR: b.podCIDR.String(), Underlay: b.underlay.String(),
		Seeds: []string{net.JoinHostPort(a.underlay.String(), "7946")}, Socket: filepath.Join(dir, "b.sock"), Rotation: time.Hour, StateFile: filepath.Join(dir, "b.json")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t0 := time.Now()
	tunnelTo := func(g *gatewayProc, cluster string) (tunnel.Tunnel, error) {
		st, err := g.tunnels(ctx)
		if err != nil {
			return tunnel.Tunnel{}, err
		}
		for _, tu := range st.Tunnels {
			if tu.Cluster == cluster {
				return tu, nil
			}
		}
		return tunnel.Tunnel{}, fmt.Errorf("no tunnel to %s yet: %+v", cluster, st)
	}
	eventually(t, 30*time.Second, "A has a tunnel to B", func() error { _, err := tunnelTo(ga, b.cluster); return err })
	eventually(t, 30*time.Second, "B has a tunnel to A", func() error { _, err := tunnelTo(gb, a.cluster); return err })
	eventually(t, handshakeTimeout, "pod A pings pod B", func() error { return ping(a.podName, b.podIP, 0) })
	t.Logf("gateways started → pod-to-pod ping: %v", time.Since(t0).Round(time.Millisecond))
	must(t, ping(b.podName, a.podIP, 0))
	must(t, tcpEcho(t, a, b, 1<<20))
	must(t, tcpEcho(t, b, a, 1<<20))
	if st, _ := ga.tunnels(ctx); len(st.Conditions) != 0 {
		t.Fatalf("conditions: %+v", st.Conditions)
	}

	// Rotation through the local API (what `patronus keys rotate` calls) under a stream.
	before, _ := tunnelTo(ga, b.cluster)
	var rr tunnel.RotateResult
	res := streamDuring(t, a, b, 6*time.Second, func(mark func()) {
		time.Sleep(2 * time.Second)
		mark()
		if err := gb.api.Do(ctx, http.MethodPost, tunnel.PathKeysRotate, &rr); err != nil {
			t.Error(err)
		}
	})
	if res.err != nil || res.sent != res.received {
		t.Fatalf("stream across a mesh-announced rotation: %v (sent %d, received %d)", res.err, res.sent, res.received)
	}
	if rr.PreviousPublicKey != before.PublicKey || rr.PublicKey == before.PublicKey {
		t.Fatalf("rotation result %+v, A knew %s", rr, before.PublicKey)
	}
	eventually(t, 10*time.Second, "A uses B's new key", func() error {
		tu, err := tunnelTo(ga, b.cluster)
		if err == nil && tu.PublicKey != rr.PublicKey {
			err = fmt.Errorf("A's peer for B is %s", tu.PublicKey)
		}
		return err
	})
	t.Logf("mesh-announced rotation under a TCP stream: %d MB, no reset; longest stall %v (before: %v)",
		res.received>>20, res.maxGap.Round(time.Millisecond), res.maxGapBefore.Round(time.Millisecond))

	// Gateway A's agent restarts (SIGTERM, then started again on its database) under a
	// stream: its userspace device goes away with the process and its graceful leave makes
	// B withdraw A's announcements; the stream must survive and the gap is logged.
	keyBefore := mustStatus(t, ctx, ga).PublicKey
	var restartedIn time.Duration
	res = streamDuring(t, a, b, 8*time.Second, func(mark func()) {
		time.Sleep(1500 * time.Millisecond)
		mark()
		t0 := time.Now()
		_ = ga.cmd.Process.Signal(syscall.SIGTERM)
		_ = ga.cmd.Wait()
		ga = startGateway(t, a, cfgA)
		eventually(t, 30*time.Second, "restarted A has its tunnel to B", func() error { _, err := tunnelTo(ga, b.cluster); return err })
		eventually(t, 30*time.Second, "pod A reaches pod B after A's restart", func() error { return ping(a.podName, b.podIP, 0) })
		restartedIn = time.Since(t0)
	})
	if res.err != nil || res.sent != res.received {
		t.Fatalf("stream across a gateway agent restart: %v (sent %d, received %d)", res.err, res.sent, res.received)
	}
	if k := mustStatus(t, ctx, ga).PublicKey; k != keyBefore {
		t.Fatalf("the restarted gateway changed its key (%s → %s): it must load it from its database", keyBefore, k)
	}
	t.Logf("gateway A agent restart (SIGTERM → tunnel back, pod ping answered): %v; longest stall of a TCP stream across it %v; no reset",
		restartedIn.Round(time.Millisecond), res.maxGap.Round(time.Millisecond))

	// Gateway B dies without leaving: its announcements expire (TTL 3s) and A withdraws.
	must(t, gb.cmd.Process.Kill())
	_ = gb.cmd.Wait()
	t1 := time.Now()
	eventually(t, 30*time.Second, "A withdraws B's routes and peer", func() error {
		if out := routesProto77(t, a.gwName); strings.TrimSpace(out) != "" {
			return errors.New("routes still there: " + out)
		}
		st, err := ga.tunnels(ctx)
		if err != nil {
			return err
		}
		if len(st.Tunnels) != 0 {
			return fmt.Errorf("tunnels: %+v", st.Tunnels)
		}
		return nil
	})
	t.Logf("gateway B killed → A withdrew routes and peer after %v", time.Since(t1).Round(time.Millisecond))
}
