package probe

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/paths"
)

func TestService(t *testing.T) {
	a, err := NewService(ServiceOptions{ResponderAddr: "127.0.0.1:0", MetricsSocket: "off"})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a.Run)
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	b, err := NewService(ServiceOptions{ResponderAddr: "off", MetricsSocket: sock, Prober: Options{
		Config: paths.Config{Interval: 10 * time.Millisecond},
		Paths:  []Path{{PathSpec: paths.PathSpec{ID: "a", Dst: "cluster-a", Remote: a.ResponderAddr().String()}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if b.ResponderAddr() != nil {
		t.Error("responder on although off")
	}
	run(t, b.Run)
	waitFor(t, 5*time.Second, "path up", func() bool {
		s, _ := b.Monitor().Selection(paths.Requirement{Dst: "cluster-a", Class: paths.BestEffort})
		return s.PathID == "a"
	})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(`{"path_id":"a","error_rate":0.05}` + "\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != `{"ok":true}`+"\n" {
		t.Fatalf("reply %q %v", buf[:n], err)
	}
	if s := b.Monitor().Snapshot(time.Now()).Paths[0]; s.L7 == nil || s.Score > 70 {
		t.Errorf("L7 not counted: %+v", s)
	}
}

func TestPathsFromConfig(t *testing.T) {
	got, err := PathsFromConfig([]config.RemoteCluster{
		{ID: "b", Endpoint: "192.168.1.2:51820", Paths: []string{"10.9.0.2:51820", "192.168.1.2:51821"}},
		{ID: "c", Endpoint: "[fd00::3]:51820"},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []paths.PathSpec{
		{ID: "b/192.168.1.2", Src: "default", Dst: "b", Remote: "192.168.1.2:7948"},
		{ID: "b/10.9.0.2", Src: "default", Dst: "b", Remote: "10.9.0.2:7948"},
		{ID: "c/fd00::3", Src: "default", Dst: "c", Remote: "[fd00::3]:7948"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].PathSpec != want[i] {
			t.Errorf("%d: %+v, want %+v", i, got[i].PathSpec, want[i])
		}
	}
	if _, err := PathsFromConfig([]config.RemoteCluster{{ID: "x", Endpoint: "nohostport"}}, 0); err == nil {
		t.Error("bad endpoint accepted")
	}
}
