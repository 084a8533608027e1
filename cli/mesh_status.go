package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/store"
)

// edgeStatus is what `patronus mesh run` serves on GET /v1/status (localapi.Status with
// Mode edge), so `patronus status` works against an edge node's socket: the node, its
// database (for the CNI lines), the mesh, and ready once the node's pod block and
// conflist exist (with --pod-network). The pod block, routes and lost pods are on
// /v1/nodenet, which `patronus status` reads next.
type edgeStatus struct {
	node, cluster, database string
	started                 time.Time
	mesh                    *mesh.Node
	ctrl                    *nodenet.EdgeController // nil without --pod-network
	db                      *store.DB               // nil without --database
}

func (e *edgeStatus) status(ctx context.Context) localapi.Status {
	s := localapi.Status{Mode: localapi.ModeEdge, Node: e.node, ClusterID: e.cluster, Version: Version,
		StartedAt: e.started, Ready: true, Database: e.database, Tunnels: []localapi.Tunnel{}}
	m := &localapi.Mesh{Running: true, Announcements: len(e.mesh.State().List())}
	m.Members, m.Alive = mesh.CountMembers(e.mesh.Members())
	s.Mesh = m
	if e.ctrl != nil {
		if st := e.ctrl.Status(); st.ConfList == "" {
			s.Ready, s.NotReadyReason = false, "waiting for the node's pod block (claimed through the mesh) and CNI conflist"
			if st.LastError != "" {
				s.NotReadyReason += ": " + st.LastError
			}
		}
	}
	if e.db != nil {
		if n, err := e.db.CountPods(ctx); err == nil {
			s.PodsManaged = n
		}
	}
	return s
}

func (e *edgeStatus) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(e.status(r.Context()))
}
