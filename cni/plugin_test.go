package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/store"
)

// fakeKernel is an in-memory node: links by name, pod interfaces by netns/ifname.
type fakeKernel struct {
	mu      sync.Mutex
	links   map[string]link.Link
	pods    map[string]link.PodConfig // netns + "/" + ifname
	peer    map[string]string         // host veth -> pod key
	fwd     bool
	nextIdx int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{links: map[string]link.Link{}, pods: map[string]link.PodConfig{}, peer: map[string]string{}, nextIdx: 10}
}

func (f *fakeKernel) EnsureBridge(s link.BridgeSpec) (link.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[s.Name]; ok {
		return l, nil
	}
	f.nextIdx++
	l := link.Link{Name: s.Name, Index: f.nextIdx, MAC: "02:00:00:00:00:01"}
	f.links[s.Name] = l
	return l, nil
}

func (f *fakeKernel) AddVeth(s link.VethSpec) (link.Link, link.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pods[s.PodNetns+"/"+s.PodIfName]; ok {
		return link.Link{}, link.Link{}, fmt.Errorf("%s already exists", s.PodIfName)
	}
	f.nextIdx++
	h := link.Link{Name: s.HostName, Index: f.nextIdx, Master: f.links[s.Bridge].Index, MAC: "02:00:00:00:00:02"}
	f.links[s.HostName] = h
	f.pods[s.PodNetns+"/"+s.PodIfName] = link.PodConfig{Netns: s.PodNetns, IfName: s.PodIfName}
	f.peer[s.HostName] = s.PodNetns + "/" + s.PodIfName
	return h, link.Link{Name: s.PodIfName, Index: 2, MAC: "02:00:00:00:00:03", MTU: 1500}, nil
}

func (f *fakeKernel) ConfigurePod(c link.PodConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[c.Netns+"/"+c.IfName] = c
	return nil
}

func (f *fakeKernel) CheckPod(c link.PodConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pods[c.Netns+"/"+c.IfName]; !ok {
		return errors.New("missing")
	}
	return nil
}

func (f *fakeKernel) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	// The pod end of a veth goes with the host end.
	if k, ok := f.peer[name]; ok {
		delete(f.pods, k)
		delete(f.peer, name)
	}
	return nil
}

func (f *fakeKernel) DeletePodLink(netns, ifname string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, netns+"/"+ifname)
	return nil
}

func (f *fakeKernel) LinkByName(name string) (link.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	if !ok {
		return link.Link{}, link.ErrNotFound
	}
	return l, nil
}

func (f *fakeKernel) HostVeths() ([]link.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []link.Link
	for _, l := range f.links {
		if link.IsHostVethName(l.Name) {
			out = append(out, l)
		}
	}
	return out, nil
}

func (f *fakeKernel) EnableForwarding(v4, v6 bool) error {
	f.fwd = true
	return nil
}

func unitConf(t *testing.T, dir string) []byte {
	t.Helper()
	// No agent in unit tests: ADD's wait for the pod's policy is tested in policy_test.go.
	return patch(t, map[string]any{"ipam.dataDir": filepath.Join(dir, "ipam"), "sdwan.database": filepath.Join(dir, "k8s.db"),
		"sdwan.enable_policy_enforcement": false})
}

func reservations(t *testing.T, dir string) int {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dir, "ipam", "patronus-k8s"))
	n := 0
	for _, e := range ents {
		if e.Name() != "lock" && !strings.HasPrefix(e.Name(), "last_reserved_ip") {
			n++
		}
	}
	return n
}

func rows(t *testing.T, dir string) int {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(dir, "k8s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n, err := db.CountPods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAddRollbackAtEveryStep(t *testing.T) {
	for _, step := range []string{"ipam", "bridge", "veth", "pod", "forwarding", "register", "result"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			k := newFakeKernel()
			var out bytes.Buffer
			p := New(Options{Kernel: k, Stdout: &out, Fault: func(s string) error {
				if s == step {
					return errors.New("injected")
				}
				return nil
			}})
			args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/fake", IfName: "eth0", StdinData: unitConf(t, dir)}
			err := p.Add(args)
			if err == nil || !strings.Contains(err.Error(), "injected") || !strings.Contains(err.Error(), step) {
				t.Fatalf("want the injected failure at %s, got %v", step, err)
			}
			if out.Len() != 0 {
				t.Fatalf("a failed ADD printed a result: %s", out.String())
			}
			if v, _ := k.HostVeths(); len(v) != 0 {
				t.Fatalf("veth left: %v", v)
			}
			if len(k.pods) != 0 {
				t.Fatalf("pod interface left: %v", k.pods)
			}
			if n := reservations(t, dir); n != 0 {
				t.Fatalf("%d reservations left", n)
			}
			if n := rows(t, dir); n != 0 {
				t.Fatalf("%d rows left", n)
			}
		})
	}
}

func TestAddDelWithFakeKernel(t *testing.T) {
	dir := t.TempDir()
	k := newFakeKernel()
	var out bytes.Buffer
	p := New(Options{Kernel: k, Stdout: &out})
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/fake", IfName: "eth0", StdinData: unitConf(t, dir),
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
	if err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	var res current.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Interfaces) != 3 || res.Interfaces[2].Sandbox != args.Netns || *res.IPs[0].Interface != 2 ||
		res.Interfaces[1].Name != link.HostVethName("c1", "eth0") || res.Interfaces[0].Name != DefaultBridge {
		t.Fatalf("result: %s", out.String())
	}
	pc := k.pods[args.Netns+"/eth0"]
	if len(pc.Addrs) != 1 || pc.Addrs[0] != netip.MustParsePrefix("10.244.1.10/16") || len(pc.Routes) != 2 ||
		pc.Routes[1] != (link.Route{Dst: netip.MustParsePrefix("10.96.0.0/12"), GW: netip.MustParseAddr("10.244.0.1")}) || !k.fwd {
		t.Fatalf("pod config %+v, forwarding %v", pc, k.fwd)
	}
	if rows(t, dir) != 1 || reservations(t, dir) != 1 {
		t.Fatal("ADD did not register or reserve")
	}
	for range 2 {
		if err := p.Del(args); err != nil {
			t.Fatal(err)
		}
	}
	if rows(t, dir) != 0 || reservations(t, dir) != 0 || len(k.pods) != 0 {
		t.Fatal("DEL left state behind")
	}
}
