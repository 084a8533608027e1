package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/store"
)

// readMeshState reads the mesh state the agent last persisted (kv mesh/state), for
// `patronus status` while the agent is down. It never creates the database.
func readMeshState(ctx context.Context, path string) *localapi.Mesh {
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	db, err := store.Open(ctx, path)
	if err != nil {
		return nil
	}
	defer db.Close()
	s, ok, err := mesh.LoadState(ctx, db)
	if err != nil || !ok {
		return nil
	}
	m := &localapi.Mesh{Announcements: len(s.Announcements), SavedAt: s.SavedAt}
	m.Members, m.Alive = mesh.CountMembers(s.Members)
	return m
}

// meshLine is the mesh's ✓/✗ line: live from the agent, or saved in the database.
func meshLine(m *localapi.Mesh) []statusLine {
	if m == nil {
		return nil
	}
	counts := fmt.Sprintf("%d members (%d alive), %d announcements accepted", m.Members, m.Alive, m.Announcements)
	switch {
	case m.NotGateway != "" && m.RemoteInClear != "":
		// Node encryption is on but the leg to the gateway is not (all of it) inside WireGuard.
		return []statusLine{{true, "Mesh: not a gateway node (" + m.NotGateway + ")"},
			{false, "Remote clusters via the gateway: node encryption is on but " + m.RemoteInClear}}
	case m.NotGateway != "":
		return []statusLine{{true, "Mesh: not a gateway node (" + m.NotGateway + ")"}}
	case m.Running && m.ClaimsOnBehalf > 0:
		return []statusLine{{true, fmt.Sprintf("Mesh: %s, pod block claims of %d non-gateway nodes announced on their behalf", counts, m.ClaimsOnBehalf)}}
	case m.Running:
		return []statusLine{{true, "Mesh: " + counts}}
	case m.Error != "":
		return []statusLine{{false, "Mesh: not running: " + m.Error}}
	case !m.SavedAt.IsZero():
		return []statusLine{{true, "Mesh: " + counts + " (saved by the agent at " + m.SavedAt.Local().Format(time.RFC3339) + ")"}}
	default:
		return []statusLine{{false, "Mesh: not running yet"}}
	}
}
