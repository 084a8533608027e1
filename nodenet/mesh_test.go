package nodenet

import (
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
)

// Claims come from signed podblock announcements of alive members of the cluster only;
// the unsigned tag is ignored.
func TestMeshClaims(t *testing.T) {
	ms := []mesh.Member{
		{Name: "a", Addr: "192.168.1.1:7946", Status: "alive", Cluster: "c1"},
		{Name: "b", Addr: "192.168.1.2:7946", Status: "failed", Cluster: "c1"},
		{Name: "c", Addr: "192.168.1.3:7946", Status: "alive", Cluster: "c2"},
		{Name: "d", Addr: "[::ffff:192.168.1.4]:7946", Status: "alive", Cluster: "c1", Tags: map[string]string{TagPodBlock: "10.244.9.0/24@1"}},
		{Name: "e", Addr: "bogus", Status: "alive", Cluster: "c1"},
	}
	block := func(origin, cluster, p string, at int64) announce.Announcement {
		return announce.Announcement{Kind: announce.KindPodBlock, Origin: origin, Cluster: cluster, Prefixes: []netip.Prefix{pfx(p)}, Claimed: at}
	}
	anns := []announce.Announcement{
		block("a", "c1", "10.244.1.0/24", 1000),
		block("b", "c1", "10.244.2.0/24", 1000), // failed member: no claim in the view
		block("c", "c1", "10.244.3.0/24", 1000), // member of another cluster
		{Kind: announce.KindPrefix, Origin: "d", Cluster: "c1", Prefixes: []netip.Prefix{pfx("10.244.0.0/16")}},
	}
	got := MeshClaims(ms, anns, "c1")
	if len(got) != 2 || got[0].Name != "a" || got[0].Addr != ip("192.168.1.1") || got[0].Claim != "10.244.1.0/24@1000" ||
		got[1].Name != "d" || got[1].Addr != ip("192.168.1.4") || got[1].Claim != "" {
		t.Fatalf("members %+v", got)
	}
}

// SerfPublisher against a real serf on loopback: the tag is set, other tags kept.
func TestSerfPublisher(t *testing.T) {
	conf := serf.DefaultConfig()
	conf.NodeName = "n1"
	conf.MemberlistConfig = memberlist.DefaultLocalConfig()
	conf.MemberlistConfig.BindAddr, conf.MemberlistConfig.BindPort, conf.MemberlistConfig.AdvertisePort = "127.0.0.1", 0, 0
	conf.Tags = map[string]string{"cluster": "c1"}
	conf.LogOutput, conf.MemberlistConfig.LogOutput = testWriter{}, testWriter{}
	s, err := serf.Create(conf)
	if err != nil {
		t.Fatalf("serf on loopback: %v", err)
	}
	defer s.Shutdown()
	if err := SerfPublisher(s)("10.244.3.0/24@5"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tags := s.LocalMember().Tags
		if tags[TagPodBlock] == "10.244.3.0/24@5" && tags["cluster"] == "c1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tags %v", tags)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testWriter struct{}

func (testWriter) Write(b []byte) (int, error) { return len(b), nil }
