package multinode

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/nodenet"
)

// routeWatch records, for each node it watches, when a nodenet route (protocol
// nodenet.RouteProtocol) to each destination was first seen in the node's namespace
// (polled every 10ms through one netlink handle per node).
type routeWatch struct {
	mu    sync.Mutex
	first map[string]map[netip.Prefix]time.Time // node -> dst -> first seen
	stop  chan struct{}
	done  sync.WaitGroup
}

func watchRoutes(t *testing.T, nodes ...*edgeNode) *routeWatch {
	w := &routeWatch{first: map[string]map[netip.Prefix]time.Time{}, stop: make(chan struct{})}
	for _, n := range nodes {
		h := handleIn(t, n.netns)
		w.first[n.name] = map[netip.Prefix]time.Time{}
		w.done.Go(func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: nodenet.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
				now := time.Now()
				if err == nil {
					w.mu.Lock()
					for _, r := range rs {
						if p, ok := netip.AddrFromSlice(r.Dst.IP); ok {
							ones, _ := r.Dst.Mask.Size()
							dst := netip.PrefixFrom(p.Unmap(), ones)
							if _, seen := w.first[n.name][dst]; !seen {
								w.first[n.name][dst] = now
							}
						}
					}
					w.mu.Unlock()
				}
				select {
				case <-w.stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	t.Cleanup(w.close)
	return w
}

func (w *routeWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.done.Wait()
}

func (w *routeWatch) seen(node string, dst netip.Prefix) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.first[node][dst]
	return at, ok
}

// TestEdgeJoinRouteLatency measures how long after a joining edge node claims its block
// (the claim time it signs, same host clock) the nodes already there route it, with the
// controllers following the mesh's changes (mesh.Node.Subscribe) and, as before that,
// with only their periodic resync (2s, `patronus mesh run`'s default). Both are
// correct: the assertion is only that every join is routed on every node (within a
// generous 20s); the numbers are logged (BENCHMARKS.md records them).
func TestEdgeJoinRouteLatency(t *testing.T) {
	requireRoot(t)
	pluginDir(t)
	const resync = 2 * time.Second
	results := map[string][]time.Duration{}
	for i, mode := range []string{"resync-only", "events"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, nil, "")
			l.cidr = netip.MustParsePrefix("10.245.0.0/20")
			ec := newEdgeCluster(l)
			ec.resync, ec.noEvents = resync, mode == "resync-only"
			ip := func(k int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, byte(90 + i), byte(10 + k)}) }
			a := ec.addNode(fmt.Sprintf("j%d-a", i), ip(1), nil)
			b := ec.addNode(fmt.Sprintf("j%d-b", i), ip(2), nil, a)
			w := watchRoutes(t, a, b)
			for k := range 3 {
				n := ec.addNode(fmt.Sprintf("j%d-n%d", i, k), ip(3+k), nil, a)
				st, err := n.status()
				if err != nil {
					t.Fatal(err)
				}
				blk := netip.MustParsePrefix(st.Block)
				for _, o := range []*edgeNode{a, b} {
					var at time.Time
					eventually(t, 20*time.Second, o.name+" routes "+n.name+"'s block "+blk.String(), func() error {
						var ok bool
						if at, ok = w.seen(o.name, blk); !ok {
							return fmt.Errorf("no route yet")
						}
						return nil
					})
					// The joiner may re-claim once at start (a block it took before hearing
					// the others): its final claim time is what the others route.
					st, err := n.status()
					if err != nil {
						t.Fatal(err)
					}
					d := at.Sub(st.ClaimedAt)
					t.Logf("%s: %s's block %s routed on %s %s after its claim", mode, n.name, blk, o.name, d.Round(time.Millisecond))
					results[mode] = append(results[mode], d)
				}
			}
		})
	}
	for _, mode := range []string{"resync-only", "events"} {
		ds := results[mode]
		if len(ds) == 0 {
			continue
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		t.Logf("%s (resync %s): claim → route on the other nodes, %d samples: min %s, median %s, mean %s, max %s", mode, resync, len(ds),
			ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), (sum / time.Duration(len(ds))).Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
	}
}
