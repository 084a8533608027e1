package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// makeNetns creates a named network namespace, removed at cleanup, and returns its path.
func makeNetns(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("pt-ag%s-%s", prefix, hex.EncodeToString(b))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore namespace: %v", serr) // never let this thread run other goroutines
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return filepath.Join("/var/run/netns", name)
}

// The real plugin through libcni, as a runtime calls it: ADD registers the pod (namespace,
// name, UID from CNI_ARGS) and the agent lists it with the IP the plugin assigned and the
// labels of the API object; STATUS succeeds once the agent is ready; DEL and the object's
// deletion make it disappear.
func TestRealCNIPlugin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a bridge and veths (CI runs it as root)")
	}
	bin := patronusBin(t)
	c := k8senv.Start(t)
	k := c.Client()
	dir := nodeDir(t)
	opts := baseOptions(t, c, dir)

	cniBin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(cniBin, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cniBin, "patronus-cni"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	// 1.1.0: STATUS exists only from that version (libcni skips it for older configs).
	conflist := map[string]any{"cniVersion": "1.1.0", "name": "patronus-k8s", "plugins": []any{map[string]any{
		"type": "patronus-cni", "bridge": "cni-bridge0",
		"ipam": map[string]any{"type": "host-local", "subnet": "10.244.0.0/16", "rangeStart": "10.244.1.10",
			"rangeEnd": "10.244.254.254", "gateway": "10.244.0.1", "dataDir": filepath.Join(dir, "ipam")},
		"sdwan": map[string]any{"database": opts.DatabasePath, "cluster_id": "test-cluster",
			"enable_policy_enforcement": true, "agent_socket": opts.SocketPath, "default_qos_class": "best-effort"},
	}}}
	raw, _ := json.Marshal(conflist)
	if err := os.WriteFile(opts.ConflistPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	lc := libcni.NewCNIConfigWithCacheDir([]string{cniBin}, filepath.Join(dir, "cache"), nil)
	nodeNS, err := ns.GetNS(makeNetns(t, "node"))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeNS.Close()
	inNode := func(f func() error) error { return nodeNS.Do(func(ns.NetNS) error { return f() }) }

	// STATUS with policy enforcement on needs the agent.
	if err := inNode(func() error { return lc.GetStatusNetworkList(context.Background(), list) }); err == nil {
		t.Fatal("STATUS succeeded without an agent")
	}
	ra := startAgent(t, opts)
	if err := inNode(func() error { return lc.GetStatusNetworkList(context.Background(), list) }); err != nil {
		t.Fatalf("STATUS with the agent ready: %v", err)
	}

	pod := createPod(t, k, "default", "web", map[string]string{"app": "web"}, map[string]string{"patronus.io/qos-class": "bulk"})
	rt := &libcni.RuntimeConf{ContainerID: "ctr-web-" + string(pod.UID)[:8], NetNS: makeNetns(t, "pod"), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web"}, {"K8S_POD_UID", string(pod.UID)}}}
	var res *current.Result
	if err := inNode(func() error {
		r, err := lc.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	}); err != nil {
		t.Fatalf("CNI ADD: %v", err)
	}
	t.Cleanup(func() { inNode(func() error { return lc.DelNetworkList(context.Background(), list, rt) }) })
	if len(res.IPs) == 0 {
		t.Fatalf("ADD returned no IP: %+v", res)
	}
	ip := res.IPs[0].Address.String()

	got := waitPod(t, ra.client, "default", "web", func(p *localapi.Pod) error {
		if p.Labels["app"] != "web" || len(p.IPs) != 1 || p.IPs[0] != ip || p.QoS.Class != "bulk" {
			return fmt.Errorf("pod %+v, want IP %s, label app=web, class bulk", *p, ip)
		}
		return nil
	})
	if got.UID != string(pod.UID) || got.ContainerID != rt.ContainerID || got.HostVeth == "" {
		t.Errorf("pod as listed: %+v", got)
	}

	if err := inNode(func() error { return lc.DelNetworkList(context.Background(), list, rt) }); err != nil {
		t.Fatalf("CNI DEL: %v", err)
	}
	if err := k.CoreV1().Pods("default").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*1e9, "web gone after DEL", func() error {
		pods, err := ra.client.Pods(context.Background())
		if err != nil {
			return err
		}
		if len(pods) != 0 {
			return fmt.Errorf("still listed: %+v", pods)
		}
		return nil
	})
}
