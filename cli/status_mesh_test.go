package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/store"
)

func TestMeshLine(t *testing.T) {
	saved := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		m    *localapi.Mesh
		ok   bool
		want string
	}{
		{"live", &localapi.Mesh{Running: true, Members: 3, Alive: 2, Announcements: 6}, true, "Mesh: 3 members (2 alive), 6 announcements accepted"},
		{"gateway announcing for others", &localapi.Mesh{Running: true, Members: 1, Alive: 1, Announcements: 3, ClaimsOnBehalf: 2}, true,
			"Mesh: 1 members (1 alive), 3 announcements accepted, pod block claims of 2 non-gateway nodes announced on their behalf"},
		{"error", &localapi.Mesh{Error: "bind: address in use"}, false, "Mesh: not running: bind: address in use"},
		{"saved", &localapi.Mesh{Members: 2, Alive: 2, Announcements: 4, SavedAt: saved}, true, "(saved by the agent at "},
		{"starting", &localapi.Mesh{}, false, "not running yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls := meshLine(tc.m)
			if len(ls) != 1 || ls[0].ok != tc.ok || !strings.Contains(ls[0].text, tc.want) {
				t.Fatalf("got %+v, want ok=%v containing %q", ls, tc.ok, tc.want)
			}
		})
	}
	if meshLine(nil) != nil {
		t.Error("no mesh: a line")
	}
	// A non-gateway node with node encryption on whose leg to the gateway is plain.
	ls := meshLine(&localapi.Mesh{NotGateway: "gw-1 is marked a gateway", RemoteInClear: "10.248.0.0/16 in the clear: the gateway node published no WireGuard key (yet)"})
	if len(ls) != 2 || !ls[0].ok || ls[1].ok || ls[1].text != "Remote clusters via the gateway: node encryption is on but 10.248.0.0/16 in the clear: the gateway node published no WireGuard key (yet)" {
		t.Errorf("non-gateway node, leg in the clear: %+v", ls)
	}
	// The same under strict node encryption: the traffic is dropped, and the line says so.
	ls = meshLine(&localapi.Mesh{NotGateway: "gw-1 is marked a gateway", RemoteInClear: "10.248.0.0/16 DROPPED by strict node encryption (not sent in the clear): the gateway node published no WireGuard key (yet)"})
	if len(ls) != 2 || ls[1].ok || ls[1].text != "Remote clusters via the gateway: node encryption is on but 10.248.0.0/16 DROPPED by strict node encryption (not sent in the clear): the gateway node published no WireGuard key (yet)" {
		t.Errorf("non-gateway node, leg dropped under strict: %+v", ls)
	}
	if ls := meshLine(&localapi.Mesh{NotGateway: "gw-1 is marked a gateway"}); len(ls) != 1 || !ls[0].ok {
		t.Errorf("non-gateway node: %+v", ls)
	}
}

func TestReadMeshState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	if readMeshState(ctx, path) != nil {
		t.Fatal("state from a missing database")
	}
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(mesh.SavedState{Node: "n1", Cluster: "c", SavedAt: time.Now().UTC(),
		Members: []mesh.Member{{Name: "n1", Status: "alive"}, {Name: "n2", Status: "failed"}}})
	if err := db.Set(ctx, mesh.StateKey, string(b)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	m := readMeshState(ctx, path)
	if m == nil || m.Members != 2 || m.Alive != 1 || m.Running || m.SavedAt.IsZero() {
		t.Fatalf("got %+v", m)
	}
}
