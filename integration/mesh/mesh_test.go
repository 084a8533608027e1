// Package meshtest runs real `patronus mesh run` agents in real network namespaces on one
// bridge: discovery by multicast alone, admission of only trusted clusters, failure and
// rejoin, a partition healed, forged announcements rejected, and event handler scripts.
package meshtest

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
)

const agents = 10

func TestMeshLAN(t *testing.T) {
	l := newLab(t)
	defer func() {
		if t.Failed() {
			l.dumpLogs()
		}
	}()
	gk, _ := trust.GenerateGossipKey()
	if err := os.WriteFile(filepath.Join(l.dir, "gossip.key"), []byte(trust.EncodeGossipKey(gk)), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile, clusterKey := l.keyFile("east")
	var all []*agent
	for i := 1; i <= agents; i++ {
		all = append(all, l.addAgent(i, fmt.Sprintf("east-%d", i), "east", keyFile,
			"--announce", fmt.Sprintf("10.244.%d.0/24", i)))
	}
	names := func(as []*agent) []string {
		var out []string
		for _, a := range as {
			out = append(out, a.name)
		}
		return out
	}
	// expect checks every agent in as sees exactly want alive (by name) and, optionally,
	// the prefixes in wantPrefixes.
	expect := func(as []*agent, want []string, wantPrefixes []string) func() error {
		slices.Sort(want)
		return func() error {
			for _, a := range as {
				ms, err := l.members(a)
				if err != nil {
					return fmt.Errorf("%s: %v", a.name, err)
				}
				var alive []string
				for _, m := range ms {
					if m.Status == "alive" {
						alive = append(alive, m.Name)
					}
				}
				slices.Sort(alive)
				if !slices.Equal(alive, want) {
					return fmt.Errorf("%s sees alive %v", a.name, alive)
				}
				if wantPrefixes != nil {
					s, err := l.state(a)
					if err != nil {
						return err
					}
					var got []string
					for _, an := range s.Announcements {
						for _, p := range an.Prefixes {
							got = append(got, p.String())
						}
					}
					slices.Sort(got)
					w := slices.Sorted(slices.Values(wantPrefixes))
					if !slices.Equal(got, w) {
						return fmt.Errorf("%s has prefixes %v, want %v", a.name, got, w)
					}
				}
			}
			return nil
		}
	}
	prefixesFor := func(idx ...int) []string {
		var out []string
		for _, i := range idx {
			out = append(out, fmt.Sprintf("10.244.%d.0/24", i))
		}
		return out
	}
	one2ten := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}

	took := eventually(t, 30*time.Second, "10 agents find each other by multicast", expect(all, names(all), prefixesFor(one2ten...)))
	t.Logf("full membership and announcements on all %d agents after %s", agents, took)
	out, err := l.cli("members", "--socket", all[0].socket)
	if err != nil || strings.Count(out, "alive") != agents || !strings.Contains(out, "cluster=east") {
		t.Fatalf("patronus members:\n%s (%v)", out, err)
	}
	t.Logf("patronus members:\n%s", out)
	if out, _ := l.cli("members", "--socket", all[0].socket, "--status", "alive", "--tag", "pods=10\\.244\\.3\\..*", "-o", "json"); !strings.Contains(out, `"east-3"`) || strings.Contains(out, `"east-4"`) {
		t.Fatalf("members --tag filter:\n%s", out)
	}

	t.Run("untrusted cluster on the same LAN is not admitted", func(t *testing.T) {
		northKey, _ := l.keyFile("north")
		// Same gossip key, so only the certificate check keeps it out; it even names a seed.
		intruder := l.addAgent(20, "north-1", "north", northKey, "--join", all[0].addr+":7946")
		time.Sleep(6 * time.Second)
		for _, a := range all {
			ms, err := l.members(a)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				if m.Name == "north-1" {
					t.Fatalf("%s admitted north-1 (%s)", a.name, m.Status)
				}
			}
		}
		ms, _ := l.members(intruder)
		if len(ms) != 1 {
			t.Fatalf("intruder sees %v", ms)
		}
		m, _ := l.metric(all[0], `patronus_mesh_beacons_ignored_total{reason="unknown_signer"}`)
		if m == "" || strings.HasSuffix(m, " 0") {
			t.Fatalf("intruder's beacons not counted as ignored: %q", m)
		}
		l.kill(intruder)
		delete(l.agents, "north-1")
	})

	t.Run("crash is detected, announcements expire, restart rejoins", func(t *testing.T) {
		victim := all[agents-1]
		l.kill(victim)
		eventually(t, 20*time.Second, "failed and expired", func() error {
			for _, a := range all[:agents-1] {
				ms, err := l.members(a)
				if err != nil {
					return err
				}
				for _, m := range ms {
					if m.Name == victim.name && m.Status != "failed" {
						return fmt.Errorf("%s sees %s %s", a.name, victim.name, m.Status)
					}
				}
			}
			return expect(all[:agents-1], names(all[:agents-1]), prefixesFor(one2ten[:agents-1]...))()
		})
		l.start(victim)
		took := eventually(t, 30*time.Second, "restart rejoins", expect(all, names(all), prefixesFor(one2ten...)))
		t.Logf("restarted agent rejoined with its announcements in %s", took)
	})

	t.Run("partition heals to converged state", func(t *testing.T) {
		a, b := all[:agents/2], all[agents/2:]
		var pa, pb []string
		for _, x := range a {
			pa = append(pa, x.port)
		}
		for _, x := range b {
			pb = append(pb, x.port)
		}
		set := func(ps []string) string { return "{ " + strings.Join(ps, ", ") + " }" }
		rules := fmt.Sprintf(`table bridge ptmesh {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname %s oifname %s drop
		iifname %s oifname %s drop
	}
}
`, set(pa), set(pb), set(pb), set(pa))
		if err := l.nft(rules); err != nil {
			t.Fatal(err)
		}
		healed := false
		defer func() {
			if !healed {
				l.nft("delete table bridge ptmesh")
			}
		}()
		eventually(t, 30*time.Second, "each half sees only itself", func() error {
			if err := expect(a, names(a), nil)(); err != nil {
				return err
			}
			return expect(b, names(b), nil)()
		})
		// Change announcements on both sides while partitioned.
		for _, c := range []struct {
			ag     *agent
			prefix string
		}{{a[0], "10.244.101.0/24"}, {b[0], "10.244.106.0/24"}} {
			ann := announce.Announcement{Kind: announce.KindPrefix, Prefixes: []netip.Prefix{netip.MustParsePrefix(c.prefix)}}
			if err := l.api(c.ag, http.MethodPost, "/v1/announcements", ann, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.nft("delete table bridge ptmesh"); err != nil {
			t.Fatal(err)
		}
		healed = true
		want := prefixesFor(2, 3, 4, 5, 7, 8, 9, 10)
		want = append(want, "10.244.101.0/24", "10.244.106.0/24")
		took := eventually(t, 60*time.Second, "converged after heal", func() error {
			if err := expect(all, names(all), want)(); err != nil {
				return err
			}
			digests := map[string]bool{}
			for _, x := range all {
				s, err := l.state(x)
				if err != nil {
					return err
				}
				digests[s.Digest] = true
			}
			if len(digests) != 1 {
				return fmt.Errorf("%d different state digests", len(digests))
			}
			return nil
		})
		t.Logf("converged on every agent %s after the partition healed", took)
	})

	t.Run("forged, unknown, replayed and unauthorised announcements are rejected and counted", func(t *testing.T) {
		now := time.Now()
		ghost, err := trust.NewIdentity("east", clusterKey, "ghost", now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		strangerKey, _ := trust.GenerateClusterKey()
		stranger, _ := trust.NewIdentity("north", strangerKey, "x", now, time.Hour)
		seal := func(id trust.Identity, prefix string, seq uint64) []byte {
			w, err := announce.Seal(announce.Announcement{Kind: announce.KindProbe, Origin: id.Cert.Node, Cluster: id.Cert.Cluster,
				Seq: seq, Expires: now.Add(2 * time.Minute).UnixMilli(), Prefixes: []netip.Prefix{netip.MustParsePrefix(prefix)},
				Probe: &announce.Probe{Links: []announce.Link{{Peer: "east-1", RTTMicros: 100}}}}, id)
			if err != nil {
				t.Fatal(err)
			}
			return w
		}
		// Long-lived so that a copy gossip delivers late (seen in CI: 10 s under
		// load) is still judged a replay, not expired.
		valid := seal(ghost, "10.244.200.0/24", 1)
		// Flip a byte of the signed body, keeping certificate and signature.
		forged := flipBody(t, seal(ghost, "10.244.201.0/24", 2))
		before := map[string]map[string]float64{}
		for _, x := range all {
			s, err := l.state(x)
			if err != nil {
				t.Fatal(err)
			}
			before[x.name] = s.Rejected
		}
		for _, p := range [][]byte{
			valid, valid, // the second is a replay
			forged,
			seal(stranger, "10.9.0.0/24", 3),
			seal(ghost, "192.168.0.0/24", 4),
		} {
			if err := l.api(all[0], http.MethodPost, "/v1/events", mesh.EventRequest{Name: mesh.AnnounceEvent, Payload: p}, nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // keep the two copies of valid in order
		}
		eventually(t, 20*time.Second, "every agent counted every rejection", func() error {
			for _, x := range all {
				s, err := l.state(x)
				if err != nil {
					return err
				}
				for _, r := range []announce.Reason{announce.ReasonReplay, announce.ReasonBadSignature, announce.ReasonUnknownSigner, announce.ReasonUnauthorisedPrefix} {
					if s.Rejected[string(r)] < before[x.name][string(r)]+1 {
						return fmt.Errorf("%s: %s count %v", x.name, r, s.Rejected[string(r)])
					}
				}
				for _, an := range s.Announcements {
					for _, p := range an.Prefixes {
						if p.String() != "10.244.200.0/24" && (p.Addr().As4()[2] >= 201 || !strings.HasPrefix(p.String(), "10.244.")) {
							return fmt.Errorf("%s accepted %s", x.name, p)
						}
					}
				}
			}
			return nil
		})
		m, _ := l.metric(all[3], "patronus_mesh_announcements_rejected_total")
		t.Logf("rejection counters on %s:\n%s", all[3].name, m)
	})

	t.Run("event handlers see join, user event and leave", func(t *testing.T) {
		if out, err := l.cli("event", "--socket", all[1].socket, "deploy", "v1.2.3"); err != nil {
			t.Fatalf("patronus event: %v %s", err, out)
		}
		leaver := all[agents-2]
		l.stop(leaver)
		watcher := all[0]
		for _, c := range []struct{ prefix, must string }{
			{"member-join", "SERF_SELF_NAME=east-1"},
			{"member-join", "SERF_TAG_CLUSTER=east"},
			{"member-join", "SERF_SELF_ROLE=gateway"},
			{"member-join", "east-2\t10.77.0.2\tgateway\t"},
			{"user", "SERF_USER_EVENT=deploy"},
			{"user", "SERF_USER_LTIME="},
			{"user", "---\nv1.2.3\n"},
			{"member-leave", leaver.name + "\t" + leaver.addr + "\t"},
		} {
			eventually(t, 15*time.Second, c.prefix+" handler output has "+c.must, func() error {
				got := readHooks(watcher.hookDir, c.prefix)
				if !strings.Contains(got, c.must) {
					return fmt.Errorf("not found in:\n%s", tail(got, 1500))
				}
				return nil
			})
		}
		// A graceful leave withdraws the leaver's announcement before its TTL.
		eventually(t, 5*time.Second, "leave withdraws at once", func() error {
			s, err := l.state(watcher)
			if err != nil {
				return err
			}
			for _, an := range s.Announcements {
				if an.Origin == leaver.name {
					return fmt.Errorf("still has %v", an.Prefixes)
				}
			}
			return nil
		})
	})
}

func readHooks(dir, prefix string) string {
	ents, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			c, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			b.Write(c)
			b.WriteString("\n")
		}
	}
	return b.String()
}
