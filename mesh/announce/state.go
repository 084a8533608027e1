package announce

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sync"
	"time"
)

// State holds the accepted announcements, one per slot. Safe for concurrent use.
type State struct {
	mu      sync.Mutex
	entries map[string]Announcement
	version uint64
}

// NewState returns an empty state.
func NewState() *State { return &State{entries: map[string]Announcement{}} }

func (s *State) put(a Announcement) {
	s.mu.Lock()
	s.entries[a.Slot()] = a
	s.version++
	s.mu.Unlock()
}

func (s *State) remove(slot string) {
	s.mu.Lock()
	if _, ok := s.entries[slot]; ok {
		delete(s.entries, slot)
		s.version++
	}
	s.mu.Unlock()
}

// WithdrawOrigin removes every announcement of cluster/origin (the node left gracefully)
// and returns how many were removed.
func (s *State) WithdrawOrigin(cluster, origin string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for slot, a := range s.entries {
		if a.Origin == origin && (cluster == "" || a.Cluster == cluster) {
			delete(s.entries, slot)
			n++
		}
	}
	if n > 0 {
		s.version++
	}
	return n
}

// Expire removes the announcements whose expiry is not after now and returns them.
func (s *State) Expire(now time.Time) []Announcement {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []Announcement
	for slot, a := range s.entries {
		if !now.Before(a.ExpiresAt()) {
			delete(s.entries, slot)
			gone = append(gone, a)
		}
	}
	if len(gone) > 0 {
		s.version++
	}
	return gone
}

// List returns the announcements sorted by slot.
func (s *State) List() []Announcement {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Announcement, 0, len(s.entries))
	for _, a := range s.entries {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Announcement) int {
		if a.Slot() < b.Slot() {
			return -1
		}
		if a.Slot() > b.Slot() {
			return 1
		}
		return 0
	})
	return out
}

// Version increases on every change (persistence writes only when it moved).
func (s *State) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Digest summarises the content so nodes can compare states: two nodes with equal digests
// hold the same announcements. Sequence numbers and expiries are left out: they change on
// every refresh, and two nodes that hold the same statements have converged even if one
// has not seen the latest refresh yet.
func (s *State) Digest() string {
	h := sha256.New()
	for _, a := range s.List() {
		a.Seq, a.Expires = 0, 0
		b, _ := json.Marshal(a)
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Get returns the announcement held for slot.
func (s *State) Get(slot string) (Announcement, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.entries[slot]
	return a, ok
}
