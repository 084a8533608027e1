package meshtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/patronus/patronus/internal/testbin"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
)

// lab is a LAN of network namespaces on one bridge. The bridge lives in a namespace of its
// own, never the root namespace; multicast snooping is off so beacons flood every port.
type lab struct {
	t      *testing.T
	id     string // random suffix of every name
	bridge string // netns of the bridge
	dir    string
	bin    string
	agents map[string]*agent
}

type agent struct {
	name, ns, port, addr, cluster, keyFile, socket, hookDir string
	extra                                                   []string
	cmd                                                     *exec.Cmd
	log                                                     *bytes.Buffer
}

func patronusBin(t *testing.T) string { return testbin.Patronus(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

func newLab(t *testing.T) *lab {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths, a bridge and nftables rules (CI runs as root)")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (scripts/deps.sh installs iproute2 and nftables): %v", tool, err)
		}
	}
	b := make([]byte, 3)
	rand.Read(b)
	l := &lab{t: t, id: hex.EncodeToString(b), dir: t.TempDir(), bin: patronusBin(t), agents: map[string]*agent{}}
	l.bridge = "pt-mb-" + l.id
	l.ip("netns", "add", l.bridge)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.bridge).Run() })
	l.nsip(l.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.nsip(l.bridge, "link", "set", "br0", "up")
	return l
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (l *lab) nsip(ns string, args ...string) { l.ip(append([]string{"-n", ns}, args...)...) }

func (l *lab) nft(script string) error {
	cmd := exec.Command("ip", "netns", "exec", l.bridge, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v\n%s", err, out)
	}
	return nil
}

// host makes a namespace attached to the bridge with address 10.77.0.<n>/24 on eth0.
func (l *lab) host(n int) (ns, port, addr string) {
	ns = fmt.Sprintf("pt-m%s-%d", l.id, n)
	port = fmt.Sprintf("p%d", n)
	addr = fmt.Sprintf("10.77.0.%d", n)
	l.ip("netns", "add", ns)
	l.t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	l.nsip(l.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.nsip(l.bridge, "link", "set", port, "master", "br0", "multicast", "on", "up")
	l.nsip(ns, "link", "set", "lo", "up")
	l.nsip(ns, "link", "set", "eth0", "multicast", "on", "up")
	l.nsip(ns, "addr", "add", addr+"/24", "dev", "eth0")
	return ns, port, addr
}

// keyFile writes a new cluster key and returns its path and public key.
func (l *lab) keyFile(name string) (string, ed25519.PrivateKey) {
	k, err := trust.GenerateClusterKey()
	if err != nil {
		l.t.Fatal(err)
	}
	p := filepath.Join(l.dir, name+".key")
	if err := os.WriteFile(p, []byte(trust.EncodePrivateKey(k)), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return p, k
}

func (l *lab) addAgent(n int, name, cluster, keyFile string, extra ...string) *agent {
	ns, port, addr := l.host(n)
	a := &agent{name: name, ns: ns, port: port, addr: addr, cluster: cluster, keyFile: keyFile,
		socket: filepath.Join(l.dir, name+".sock"), hookDir: filepath.Join(l.dir, "hooks-"+name), extra: extra}
	os.MkdirAll(a.hookDir, 0o755)
	l.agents[name] = a
	l.start(a)
	l.t.Cleanup(func() { l.kill(a) })
	return a
}

// start runs `patronus mesh run` inside the agent's namespace. No peer address is given:
// peers are found by multicast beacons alone.
func (l *lab) start(a *agent) {
	args := []string{"netns", "exec", a.ns, l.bin, "mesh", "run",
		"--node-name", a.name, "--cluster-id", a.cluster, "--cluster-key", a.keyFile,
		"--gossip-key", filepath.Join(l.dir, "gossip.key"),
		"--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/12",
		"--socket", a.socket, "--multicast-iface", "eth0", "--beacon-interval", "1s",
		"--profile", "local", "--refresh", "2s", "--ttl", "6s", "--reconnect-interval", "2s",
		"--log-format", "text",
		"--event-handler", `member-join,member-leave,member-failed,user=` +
			`{ env | grep ^SERF_ | sort; echo ---; cat; } > ` + a.hookDir + `/$SERF_EVENT-$(date +%s%N)`,
	}
	args = append(args, a.extra...)
	a.cmd = exec.Command("ip", args...)
	a.log = &bytes.Buffer{}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", a.name, err)
	}
}

// kill ends the agent abruptly (SIGKILL: no leave message, a crash).
func (l *lab) kill(a *agent) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	a.cmd.Process.Kill()
	a.cmd.Wait()
	a.cmd = nil
	os.Remove(a.socket)
}

// stop ends the agent gracefully (SIGTERM: it leaves the mesh).
func (l *lab) stop(a *agent) {
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		l.t.Errorf("%s did not stop on SIGTERM", a.name)
		a.cmd.Process.Kill()
		<-done
	}
	a.cmd = nil
}

// cli runs the patronus CLI (from the root namespace: the socket is a file).
func (l *lab) cli(args ...string) (string, error) {
	out, err := exec.Command(l.bin, args...).CombinedOutput()
	return string(out), err
}

func (l *lab) members(a *agent) ([]mesh.Member, error) {
	out, err := l.cli("members", "--socket", a.socket, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var ms []mesh.Member
	return ms, json.Unmarshal([]byte(out), &ms)
}

func (l *lab) api(a *agent, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a.socket)
	}}}
	req, _ := http.NewRequest(method, "http://agent"+path, rd)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (l *lab) state(a *agent) (mesh.StateResponse, error) {
	var s mesh.StateResponse
	return s, l.api(a, http.MethodGet, "/v1/mesh", nil, &s)
}

func (l *lab) metric(a *agent, name string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a.socket)
	}}}
	resp, err := c.Get("http://agent/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, ln := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(ln, name) {
			lines = append(lines, ln)
		}
	}
	return strings.Join(lines, "\n"), nil
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *lab) dumpLogs() {
	for _, a := range l.agents {
		if a.log != nil {
			l.t.Logf("---- %s log (tail) ----\n%s", a.name, tail(a.log.String(), 3000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// flipBody alters one byte of the signed body of an announcement envelope, keeping the
// certificate and signature: a forged announcement.
func flipBody(t *testing.T, wire []byte) []byte {
	t.Helper()
	var env map[string][]byte
	if err := json.Unmarshal(wire, &env); err != nil {
		t.Fatal(err)
	}
	env["b"] = bytes.Replace(env["b"], []byte("201"), []byte("202"), 1)
	out, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
