package mesh

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"maps"

	"github.com/patronus/patronus/mesh/announce"
)

// EventRequest is the body of POST /v1/events.
type EventRequest struct {
	Name     string `json:"name"`
	Payload  []byte `json:"payload,omitempty"`
	Coalesce bool   `json:"coalesce,omitempty"`
}

// StateResponse is GET /v1/mesh: this node's view of the mesh.
type StateResponse struct {
	Node            string                  `json:"node"`
	Cluster         string                  `json:"cluster"`
	Digest          string                  `json:"digest"`
	Announcements   []announce.Announcement `json:"announcements"`
	Rejected        map[string]float64      `json:"rejected"`
	GossipBytesSent uint64                  `json:"gossip_bytes_sent"`
}

// HTTPHandler serves the mesh part of the agent's local API (mounted on the agent socket):
//
//	GET  /v1/members        members with status and tags
//	GET  /v1/events         recent member and user events
//	POST /v1/events         send a user event (EventRequest)
//	GET  /v1/mesh           announcements, state digest, rejection counts
//	POST /v1/announcements  sign and broadcast an announcement of this node
func (n *Node) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, n.Members())
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, n.Events())
	})
	mux.HandleFunc("POST /v1/events", func(w http.ResponseWriter, r *http.Request) {
		var req EventRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || req.Name == "" {
			httpError(w, http.StatusBadRequest, fmt.Errorf("want JSON {name, payload}: %v", err))
			return
		}
		if err := n.Broadcast(req.Name, req.Payload, req.Coalesce); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"sent": req.Name})
	})
	mux.HandleFunc("GET /v1/mesh", func(w http.ResponseWriter, _ *http.Request) {
		rej := map[string]float64{}
		for _, r := range announce.Reasons {
			rej[string(r)] = n.recv.Rejected(r)
		}
		writeJSON(w, http.StatusOK, StateResponse{Node: n.o.NodeName, Cluster: n.o.ClusterID,
			Digest: n.State().Digest(), Announcements: n.State().List(), Rejected: rej, GossipBytesSent: n.GossipBytesSent()})
	})
	mux.HandleFunc("POST /v1/announcements", func(w http.ResponseWriter, r *http.Request) {
		var a announce.Announcement
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&a); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		if err := n.Announce(a); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"announced": string(a.Kind), "at": time.Now().UTC().Format(time.RFC3339Nano)})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
