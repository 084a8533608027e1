package multinode

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/nodenet"
)

// Node key rotation under traffic: three encrypting nodes, two continuous pings between
// pods (100 per second each: node 1's pod to node 2's, node 3's pod to node 1's). Node 1
// rotates its key three times, then node 2 once. Each time: the Node annotation carries
// the new key, every peer's device has the new key (and only it) with a handshake made
// after the rotation, both pings recover (a generous bound, not a timing target), and no
// plaintext pod frame crosses the underlay at any point. The longest silence of each
// ping around each rotation is logged (the measured gap).
func TestNodeKeyRotation(t *testing.T) {
	requireEncryptionTools(t)
	cluster := k8senv.Start(t)
	pluginDir(t)
	l := newLab(t, cluster, "kube-system")
	l.encrypt = nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort)

	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, l.addNode(fmt.Sprintf("kr-node-%d", i), netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 30+i)),
			fmt.Sprintf("10.244.%d.0/24", 130+i)))
	}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
	}
	var pods []*pod
	for _, n := range nodes {
		pods = append(pods, l.addPod(n, n.name+"-p0"))
	}
	for _, pr := range [][2]int{{0, 1}, {2, 0}} {
		eventually(t, 30*time.Second, "first ping", func() error { return ping(pods[pr[0]].netns, pods[pr[1]].ip) })
	}
	streams := []*pingStream{
		startPing(t, "node1->node2", pods[0].netns, pods[1].ip),
		startPing(t, "node3->node1", pods[2].netns, pods[0].ip),
	}
	if plain, _ := count(); plain != 0 {
		t.Fatalf("%d plaintext pod frames on the underlay before any rotation", plain)
	}

	ctx := context.Background()
	var gaps []string
	for run, who := range []int{0, 0, 0, 1} {
		rot := nodes[who]
		if run > 0 {
			time.Sleep(1500 * time.Millisecond) // the baseline second below must not see the last rotation
		}
		// Steady traffic first: every stream answered in the last second.
		for _, s := range streams {
			eventually(t, 30*time.Second, s.name+" steady", func() error { return s.answeredSince(time.Now().Add(-time.Second), 50) })
		}
		plain0, wg0 := count()
		t0 := time.Now()
		res, err := rot.ctrl.RotateKey(ctx)
		t1 := time.Now()
		if err != nil {
			t.Fatalf("rotation %d of %s: %+v: %v", run+1, rot.name, res, err)
		}
		if res.PublicKey == res.PreviousPublicKey || res.PreviousPublicKey == "" {
			t.Fatalf("rotation %d: %+v", run+1, res)
		}
		obj, err := l.client.CoreV1().Nodes().Get(ctx, rot.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := obj.Annotations[nodenet.AnnotationWGKey]; got != res.PublicKey {
			t.Fatalf("rotation %d: annotation %q, want the new key %q", run+1, got, res.PublicKey)
		}
		for _, n := range nodes {
			if n == rot {
				continue
			}
			eventually(t, 30*time.Second, n.name+" has "+rot.name+"'s new key", func() error {
				st := n.ctrl.Status()
				if st.WireGuard == nil || st.WireGuard.Peers != len(nodes)-1 {
					return fmt.Errorf("device %+v: want %d peers (the old key gone)", st.WireGuard, len(nodes)-1)
				}
				for _, p := range st.PeerStates {
					if p.Node != rot.name {
						continue
					}
					// LastHandshake comes from the device's peer with this key.
					if p.PublicKey != res.PublicKey || !p.Encrypted || !p.LastHandshake.After(t0) {
						return fmt.Errorf("peer %+v: want key %s, handshake after %s", p, res.PublicKey, t0.Format(time.StampMilli))
					}
					return nil
				}
				return fmt.Errorf("no peer state for %s: %+v", rot.name, st.PeerStates)
			})
		}
		var line []string
		for _, s := range streams {
			eventually(t, 30*time.Second, s.name+" recovered after the rotation", func() error { return s.answeredSince(t1, 20) })
			gap, lost := s.gap(t0)
			// Requests sent while no session exists wait in WireGuard's queue: their round
			// trip shows the stall even when the reply gap hides in the ping's jitter.
			line = append(line, fmt.Sprintf("%s: gap %v, lost %d, max rtt %v (second before: gap %v, max rtt %v)", s.name,
				gap.Round(time.Millisecond), lost, s.maxRTT(t0, time.Now()).Round(100*time.Microsecond),
				s.longest(t0.Add(-time.Second), t0).Round(time.Millisecond), s.maxRTT(t0.Add(-time.Second), t0).Round(100*time.Microsecond)))
		}
		plain1, wg1 := count()
		if plain1 != plain0 || plain1 != 0 {
			t.Fatalf("rotation %d: %d plaintext pod frames on the underlay", run+1, plain1-plain0)
		}
		if wg1 == wg0 {
			t.Fatalf("rotation %d: no WireGuard frame on the underlay meanwhile", run+1)
		}
		msg := fmt.Sprintf("rotation %d of %s (call %v): %v", run+1, rot.name, t1.Sub(t0).Round(time.Millisecond), line)
		gaps = append(gaps, msg)
		t.Log(msg)
	}
	for _, s := range streams {
		s.stop()
	}
	if plain, _ := count(); plain != 0 {
		t.Fatalf("%d plaintext pod frames on the underlay", plain)
	}
	t.Logf("measured gaps:\n%s", strings.Join(gaps, "\n"))
}

// pingStream is a continuous ping (every 10 ms, timestamps of the replies kept).
type pingStream struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	replies []pingReply
}

type pingReply struct {
	at  time.Time
	seq int
	rtt time.Duration
}

var pingLine = regexp.MustCompile(`^\[(\d+)\.(\d+)\] .* icmp_seq=(\d+) .*time=([0-9.]+) ms`)

func startPing(t *testing.T, name, netnsName string, dst netip.Addr) *pingStream {
	t.Helper()
	s := &pingStream{name: name, done: make(chan struct{})}
	s.cmd = exec.Command("ip", "netns", "exec", netnsName, "ping", "-D", "-n", "-i", "0.01", dst.String())
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("ping %s: %v", name, err)
	}
	t.Cleanup(s.stop)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m := pingLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			sec, _ := strconv.ParseInt(m[1], 10, 64)
			frac := (m[2] + "000000")[:6]
			us, _ := strconv.ParseInt(frac, 10, 64)
			seq, _ := strconv.Atoi(m[3])
			ms, _ := strconv.ParseFloat(m[4], 64)
			s.mu.Lock()
			s.replies = append(s.replies, pingReply{at: time.Unix(sec, us*1000), seq: seq, rtt: time.Duration(ms * float64(time.Millisecond))})
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *pingStream) stop() {
	if s.cmd.Process == nil || s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	<-s.done
	_ = s.cmd.Wait()
}

// answeredSince: at least n replies arrived after since.
func (s *pingStream) answeredSince(since time.Time, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := 0
	for _, r := range s.replies {
		if r.at.After(since) {
			got++
		}
	}
	if got < n {
		return fmt.Errorf("%s: %d replies since %s, want %d", s.name, got, since.Format(time.StampMilli), n)
	}
	return nil
}

// gap is the longest time without a reply from the last reply before from to the
// present, and how many requests of that stretch got no reply.
func (s *pingStream) gap(from time.Time) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := len(s.replies) - 1
	for i > 0 && s.replies[i].at.After(from) {
		i--
	}
	var longest time.Duration
	lost := 0
	for k := i + 1; k < len(s.replies); k++ {
		a, b := s.replies[k-1], s.replies[k]
		longest = max(longest, b.at.Sub(a.at))
		lost += max(b.seq-a.seq-1, 0)
	}
	return longest, lost
}

// maxRTT is the longest round trip of the requests answered in [from, to].
func (s *pingStream) maxRTT(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, r := range s.replies {
		if !r.at.Before(from) && !r.at.After(to) {
			d = max(d, r.rtt)
		}
	}
	return d
}

// longest is the longest interval between two consecutive replies both within [from, to]
// (the same-run baseline of gap).
func (s *pingStream) longest(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for k := 1; k < len(s.replies); k++ {
		a, b := s.replies[k-1], s.replies[k]
		if !a.at.Before(from) && !b.at.After(to) {
			d = max(d, b.at.Sub(a.at))
		}
	}
	return d
}

// TestEdgeNodeKeyRotation: edge mode (no API server). The rotating node re-publishes its
// claim with the new key (EdgeOptions.PublishKey, as MeshEdge wires it into the signed
// podblock announcement; here an in-memory gossip view); the peer swaps it, handshakes,
// and a continuous ping between their pods recovers with no plaintext on the underlay.
func TestEdgeNodeKeyRotation(t *testing.T) {
	requireEncryptionTools(t)
	pluginDir(t)
	l := newLab(t, nil, "")
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort)

	var mu sync.Mutex
	view := map[string]nodenet.EdgeMember{}
	members := func() []nodenet.EdgeMember {
		mu.Lock()
		defer mu.Unlock()
		var out []nodenet.EdgeMember
		for _, m := range view {
			out = append(out, m)
		}
		return out
	}
	var edges []*nodenet.EdgeController
	var nodes []*node
	for i := 1; i <= 2; i++ {
		name, addr := fmt.Sprintf("kre-node-%d", i), netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 50+i))
		n := l.makeNode(name, addr)
		mu.Lock()
		view[name] = nodenet.EdgeMember{Name: name, Addr: addr}
		mu.Unlock()
		e, err := nodenet.NewEdge(nodenet.EdgeOptions{NodeName: name, NodeIP: addr, ClusterCIDR: l.cidr, DB: n.db,
			ConfListPath: n.confList, BaseConfList: l.baseConfList(n), NetNSPath: nsPath(n.netns),
			Members: members, PublishKey: func(claim, pub string) error {
				mu.Lock()
				defer mu.Unlock()
				m := view[name]
				m.Claim, m.Key = claim, pub
				view[name] = m
				return nil
			},
			Resync: 500 * time.Millisecond, Settle: -1, Logger: testLogger(t, name),
			Encrypt: nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		n.ctrl, n.cancel, n.done = e.Controller, cancel, make(chan error, 1)
		go func() { n.done <- e.Run(ctx) }()
		t.Cleanup(func() { l.stop(n) })
		select {
		case <-e.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no conflist after 30s: %+v", name, e.Status())
		}
		edges, nodes = append(edges, e), append(nodes, n)
	}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
	}
	p1, p2 := l.addPod(nodes[0], "kre-p1"), l.addPod(nodes[1], "kre-p2")
	eventually(t, 30*time.Second, "first ping", func() error { return ping(p1.netns, p2.ip) })
	s := startPing(t, "edge node1->node2", p1.netns, p2.ip)
	eventually(t, 30*time.Second, "steady", func() error { return s.answeredSince(time.Now().Add(-time.Second), 50) })

	t0 := time.Now()
	res, err := edges[0].RotateKey(context.Background())
	t1 := time.Now()
	if err != nil || res.PublicKey == res.PreviousPublicKey {
		t.Fatalf("rotate: %+v, %v", res, err)
	}
	mu.Lock()
	published := view[nodes[0].name].Key
	mu.Unlock()
	if published != res.PublicKey {
		t.Fatalf("claim published with key %q, want the new %q", published, res.PublicKey)
	}
	eventually(t, 30*time.Second, "node 2 swapped and handshook", func() error {
		st := nodes[1].ctrl.Status()
		if st.WireGuard == nil || st.WireGuard.Peers != 1 || len(st.PeerStates) != 1 {
			return fmt.Errorf("status %+v %+v", st.WireGuard, st.PeerStates)
		}
		if p := st.PeerStates[0]; p.PublicKey != res.PublicKey || !p.LastHandshake.After(t0) {
			return fmt.Errorf("peer %+v", p)
		}
		return nil
	})
	eventually(t, 30*time.Second, "ping recovered", func() error { return s.answeredSince(t1, 20) })
	gap, lost := s.gap(t0)
	t.Logf("edge rotation (call %v): gap %v, lost %d, max rtt %v (second before: gap %v, max rtt %v)", t1.Sub(t0).Round(time.Millisecond),
		gap.Round(time.Millisecond), lost, s.maxRTT(t0, time.Now()).Round(100*time.Microsecond),
		s.longest(t0.Add(-time.Second), t0).Round(time.Millisecond), s.maxRTT(t0.Add(-time.Second), t0).Round(100*time.Microsecond))
	s.stop()
	if plain, wg := count(); plain != 0 || wg == 0 {
		t.Fatalf("underlay: %d plaintext pod frames, %d WireGuard frames; want 0 and some", plain, wg)
	}
}
