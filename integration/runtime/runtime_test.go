package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/store"
)

// patronusConfList is the conflist the runtime reads: the shipped manifest when it exists
// (so the file users install is what gets tested), with the node's own IPAM data dir and
// database, and policy enforcement off (no agent runs in this test).
func patronusConfList(t testing.TB, tools Tools) func(n *Node) string {
	return func(n *Node) string {
		raw, err := os.ReadFile(filepath.Join(tools.RepoRoot, "manifests", "10-patronus.conflist"))
		if err != nil {
			raw = []byte(`{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"],"name":"patronus-k8s","plugins":[
				{"type":"patronus-cni","bridge":"cni-bridge0","ipam":{"type":"host-local","subnet":"10.244.0.0/16"},
				 "sdwan":{"database":"/var/lib/patronus/k8s-sdwan.db","cluster_id":"runtime-test"}}]}`)
		}
		var list map[string]any
		if err := json.Unmarshal(raw, &list); err != nil {
			t.Fatalf("manifests/10-patronus.conflist: %v", err)
		}
		found := false
		for _, p := range list["plugins"].([]any) {
			plugin := p.(map[string]any)
			if plugin["type"] != "patronus-cni" {
				continue
			}
			found = true
			plugin["ipam"].(map[string]any)["dataDir"] = n.IPAMDir
			sdwan, _ := plugin["sdwan"].(map[string]any)
			if sdwan == nil {
				sdwan = map[string]any{}
				plugin["sdwan"] = sdwan
			}
			sdwan["database"] = n.DBPath
			sdwan["enable_policy_enforcement"] = false
		}
		if !found {
			t.Fatal("conflist has no patronus-cni plugin")
		}
		b, _ := json.Marshal(list)
		return string(b)
	}
}

// bridgeAddr returns the IPv4 address of bridge in the node's netns (the pods' gateway)
// with the subnet's prefix length.
func bridgeAddr(t testing.TB, n *Node, bridge string) netip.Prefix {
	t.Helper()
	out, err := n.InNode("ip", "-j", "-4", "addr", "show", "dev", bridge)
	if err != nil {
		t.Fatalf("bridge %s in node netns: %v\n%s", bridge, err, out)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string
			PrefixLen int
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || len(links[0].AddrInfo) == 0 {
		t.Fatalf("bridge %s has no IPv4 address: %v\n%s", bridge, err, out)
	}
	ai := links[0].AddrInfo[0]
	return netip.PrefixFrom(netip.MustParseAddr(ai.Local), ai.PrefixLen)
}

// reservations lists host-local's reservations (file name = IP, content = container ID).
func reservations(t testing.TB, dir string) map[netip.Addr]string {
	t.Helper()
	out := map[netip.Addr]string{}
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue // lock and last_reserved_ip files
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// host-local writes "<container ID>\r\n<ifname>".
		out[ip] = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	return out
}

func podRows(t testing.TB, path string) []store.Pod {
	t.Helper()
	db, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("open node database: %v", err)
	}
	defer db.Close()
	pods, err := db.ListPods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func findRow(rows []store.Pod, containerID string) (store.Pod, bool) {
	for _, r := range rows {
		if r.ContainerID == containerID {
			return r, true
		}
	}
	return store.Pod{}, false
}

// TestPatronusCNIThroughContainerd runs pod sandboxes through containerd's CRI with
// patronus-cni as the network plugin: runp → ADD gives IPs, pods reach each other and the
// gateway, the database registers them; stopp → DEL frees the IP and the row.
func TestPatronusCNIThroughContainerd(t *testing.T) {
	tools := FindTools(t)
	n := StartNode(t, NodeOptions{
		Tools:       tools,
		Plugins:     []string{"host-local"}, // for a delegating config; host-local runs in-process otherwise
		PatronusCNI: true,
		ConfList:    patronusConfList(t, tools),
	})

	a := n.RunPod(t, "default", "pod-a")
	b := n.RunPod(t, "team-b", "pod-b")
	t.Logf("pod-a %s (sandbox %.12s), pod-b %s (sandbox %.12s)", a.IP, a.ID, b.IP, b.ID)
	if a.IP == b.IP {
		t.Fatalf("both pods got %s", a.IP)
	}

	gw := bridgeAddr(t, n, "cni-bridge0")
	for _, p := range []Pod{a, b} {
		if !gw.Contains(p.IP) || p.IP == gw.Addr() {
			t.Errorf("pod %s IP %s is not a host address of the bridge's subnet %s", p.Name, p.IP, gw)
		}
	}

	t.Run("pods reach each other and the gateway", func(t *testing.T) {
		for _, c := range []struct {
			from Pod
			to   netip.Addr
		}{{a, b.IP}, {b, a.IP}, {a, gw.Addr()}, {b, gw.Addr()}} {
			if err := n.PingFromPod(c.from, c.to); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("a container in a pod pings the other pod", func(t *testing.T) {
		id := n.StartContainer(t, b, "pinger", "sleep", "3600")
		out, err := n.Crictl("exec", id, "ping", "-c", "1", "-W", "3", a.IP.String())
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(string(out), "1 packets received") {
			t.Fatalf("busybox ping from pod-b to %s:\n%s", a.IP, out)
		}
	})

	t.Run("database registers the pods", func(t *testing.T) {
		rows := podRows(t, n.DBPath)
		if len(rows) != 2 {
			t.Fatalf("database has %d pods, want 2: %+v", len(rows), rows)
		}
		for _, p := range []Pod{a, b} {
			r, ok := findRow(rows, p.ID)
			if !ok {
				t.Fatalf("no database row for %s (sandbox %s): %+v", p.Name, p.ID, rows)
			}
			if r.Namespace != p.Namespace || r.Name != p.Name || r.UID != p.UID {
				t.Errorf("row for %s has namespace/name/uid %q/%q/%q, want %q/%q/%q", p.Name, r.Namespace, r.Name, r.UID, p.Namespace, p.Name, p.UID)
			}
			if r.IfName != "eth0" || r.Netns == "" {
				t.Errorf("row for %s: ifname %q netns %q", p.Name, r.IfName, r.Netns)
			}
			if !slices.ContainsFunc(r.IPs, func(pfx netip.Prefix) bool { return pfx.Addr() == p.IP }) {
				t.Errorf("row for %s has IPs %v, want %s among them", p.Name, r.IPs, p.IP)
			}
		}
	})

	t.Run("patronus status reports the node", func(t *testing.T) {
		// In the node's netns: status looks the bridge up there.
		out, err := n.InNode(tools.Patronus, "status", "--database", n.DBPath, "--cni-bin-dir", n.BinDir,
			"--socket", filepath.Join(n.Dir, "no-agent.sock"), "-o", "json")
		if err != nil {
			t.Fatalf("patronus status: %v\n%s", err, out)
		}
		var st struct {
			CNI struct {
				Plugin   struct{ Installed bool }
				Bridge   struct{ Present bool }
				Database struct {
					OK          bool
					PodsManaged int
				}
			}
		}
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("decode status: %v\n%s", err, out)
		}
		c := st.CNI
		if !c.Plugin.Installed || !c.Bridge.Present || !c.Database.OK || c.Database.PodsManaged != 2 {
			t.Errorf("patronus status: plugin installed %v, bridge present %v, database ok %v, pods managed %d (want true, true, true, 2)\n%s",
				c.Plugin.Installed, c.Bridge.Present, c.Database.OK, c.Database.PodsManaged, out)
		}
	})

	ipamDir := filepath.Join(n.IPAMDir, "patronus-k8s")
	if res := reservations(t, ipamDir); res[a.IP] != a.ID || res[b.IP] != b.ID {
		t.Fatalf("host-local reservations %v, want %s→%s and %s→%s", res, a.IP, a.ID, b.IP, b.ID)
	}

	t.Run("stopp runs DEL: IP free, row gone, other pod unaffected", func(t *testing.T) {
		// Remove the pod whose host veth lends the bridge its MAC, if one does: a Linux
		// bridge without an explicitly set MAC takes its lowest port MAC and changes it
		// when that port goes, which leaves the other pods with a stale gateway neighbour
		// entry (several seconds without network). The plugin must pin the bridge's MAC.
		victim, survivor := a, b
		brMAC := linkMAC(t, n, "cni-bridge0")
		rows := podRows(t, n.DBPath)
		if r, ok := findRow(rows, b.ID); ok && r.HostVeth != "" && linkMAC(t, n, r.HostVeth) == brMAC {
			victim, survivor = b, a
		}
		t.Logf("removing %s; bridge MAC %s", victim.Name, brMAC)
		n.RemovePod(t, victim)
		res := reservations(t, ipamDir)
		if id, held := res[victim.IP]; held {
			t.Errorf("IP %s still reserved (by %s) after stopp+rmp", victim.IP, id)
		}
		if res[survivor.IP] != survivor.ID {
			t.Errorf("%s's reservation lost: %v", survivor.Name, res)
		}
		rows = podRows(t, n.DBPath)
		if _, ok := findRow(rows, victim.ID); ok {
			t.Errorf("database still has %s after DEL: %+v", victim.Name, rows)
		}
		if _, ok := findRow(rows, survivor.ID); !ok {
			t.Errorf("database lost %s: %+v", survivor.Name, rows)
		}
		if after := linkMAC(t, n, "cni-bridge0"); after != brMAC {
			t.Errorf("bridge MAC changed from %s to %s when %s was removed: the other pods' gateway neighbour entries go stale (pin the bridge's MAC when creating it)", brMAC, after, victim.Name)
		}
		if err := n.PingFromPod(survivor, gw.Addr()); err != nil {
			t.Errorf("%s lost its network after %s was removed: %v", survivor.Name, victim.Name, err)
		}
		// The node still serves new pods, which reach the survivor.
		c := n.RunPod(t, "default", "pod-c")
		if c.IP == survivor.IP {
			t.Errorf("pod-c got %s's IP %s", survivor.Name, c.IP)
		}
		if err := n.PingFromPod(c, survivor.IP); err != nil {
			t.Error(err)
		}
		n.RemovePod(t, c)
		n.RemovePod(t, survivor)
		if res := reservations(t, ipamDir); len(res) != 0 {
			t.Errorf("reservations left after every pod was removed: %v", res)
		}
		if rows := podRows(t, n.DBPath); len(rows) != 0 {
			t.Errorf("database rows left after every pod was removed: %+v", rows)
		}
	})
}

// linkMAC returns the MAC address of a link in the node's netns.
func linkMAC(t testing.TB, n *Node, name string) string {
	t.Helper()
	out, err := n.InNode("ip", "-j", "link", "show", "dev", name)
	if err != nil {
		t.Fatalf("link %s in node netns: %v\n%s", name, err, out)
	}
	var links []struct{ Address string }
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("link %s: %v\n%s", name, err, out)
	}
	return links[0].Address
}

// TestNodeCleanupAfterContainerdCrash proves the harness leaves nothing behind when the
// runtime dies under a test: containerd is killed with SIGKILL while a pod and a
// container run, and Stop must still end the shims and containers and remove the netns,
// cgroups and state.
func TestNodeCleanupAfterContainerdCrash(t *testing.T) {
	tools := FindTools(t)
	n := StartNode(t, NodeOptions{Tools: tools, PatronusCNI: true, ConfList: patronusConfList(t, tools)})
	p := n.RunPod(t, "default", "doomed")
	id := n.StartContainer(t, p, "sleeper", "sleep", "3600")
	out, err := n.Crictl("inspect", id)
	if err != nil {
		t.Fatal(err)
	}
	var ctr struct {
		Info struct {
			PID int `json:"pid"`
		}
	}
	if err := json.Unmarshal(out, &ctr); err != nil || ctr.Info.PID == 0 {
		t.Fatalf("container pid from crictl inspect: %v\n%s", err, out)
	}
	containerd := n.ContainerdPID(t)
	if err := syscall.Kill(containerd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, containerd)

	n.Stop(t)

	for name, pid := range map[string]int{"pause": p.PID, "container": ctr.Info.PID} {
		if alive(pid) {
			t.Errorf("%s process %d survived the node's cleanup", name, pid)
		}
	}
	if _, err := os.Stat("/run/netns/" + n.Netns); !os.IsNotExist(err) {
		t.Errorf("node netns %s still exists (%v)", n.Netns, err)
	}
	if _, err := os.Stat(n.Dir); !os.IsNotExist(err) {
		t.Errorf("node state dir %s still exists (%v)", n.Dir, err)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + n.CgroupParent); len(left) > 0 {
		t.Errorf("cgroups left behind: %v", left)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func waitGone(t testing.TB, pid int) {
	t.Helper()
	for range 100 {
		if !alive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("process %d did not exit", pid)
}
