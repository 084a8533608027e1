package mcs

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/patronus/patronus/mcs/resolve"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/qos"
)

// Announcer carries exports between the clusters of the clusterset. The controller
// publishes the exports of its own cluster and reads everyone's.
//
// Publish may be called repeatedly with the same export; it replaces the earlier export
// of the same namespace/name. Implementations keep published exports alive (re-announce)
// until withdrawn and let the exports of a cluster that stopped announcing expire.
type Announcer interface {
	Publish(e resolve.Export) error
	Withdraw(namespace, name string) error
	// Exports returns the current exports of every cluster (this cluster's own may be
	// included) and a version that changes whenever the set may have changed.
	Exports() (version uint64, exports []resolve.Export)
}

// MeshNode is the part of *mesh.Node the mesh announcer uses.
type MeshNode interface {
	Announce(a announce.Announcement) error
	State() *announce.State
}

// MeshAnnouncer sends exports as signed `service` announcements through the mesh. The
// receiving side only accepts endpoints inside the exporting cluster's authorised CIDRs,
// and an export disappears when its origin leaves the mesh or stops re-announcing (the
// announcement TTL).
//
// announce.Service has no fields for session affinity, export time or endpoint readiness,
// so they travel as a suffix of its Type:
// `ClusterSetIP;sa=ClientIP;sat=10800;at=<unix ms>;nr=<i>,<j>;tp=<i>:<port>,...;qc=<class>`
// (nr: indices of not-ready endpoints; tp: target ports of the ports at those indices
// where they differ from the service port; qc: the QoS class of the Service's labels;
// itp, td: the Service's internalTrafficPolicy and trafficDistribution when set). A reader that only knows the plain type sees the
// part before the first ';'.
//
// One announcement must fit in a gossip packet (announce.MaxWireSize), about 16 IPv4
// endpoints. A larger export is split: the first announcement carries `;parts=N` and the
// first endpoints, announcements named `<name>~<i>` (i = 1..N-1, `~` cannot appear in a
// Kubernetes name) carry `;part=i` and further endpoints.
type MeshAnnouncer struct {
	Node MeshNode

	mu    sync.Mutex
	parts map[string]int // ns/name -> parts announced
}

// NewMeshAnnouncer adapts a mesh node (a *mesh.Node satisfies MeshNode).
func NewMeshAnnouncer(n MeshNode) *MeshAnnouncer { return &MeshAnnouncer{Node: n} }

// partSep separates a service name from its part number.
const partSep = "~"

// Publish announces e (its Cluster is set by the mesh from the node's certificate),
// split into as few announcements as fit.
func (m *MeshAnnouncer) Publish(e resolve.Export) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	per := max(len(e.Endpoints), 1)
	for {
		parts := splitExport(e, per)
		err := m.announceAll(parts)
		if err == nil {
			key := e.Namespace + "/" + e.Name
			for i := len(parts); i < m.parts[key]; i++ {
				_ = m.withdrawOne(e.Namespace, partName(e.Name, i))
			}
			if m.parts == nil {
				m.parts = map[string]int{}
			}
			m.parts[key] = len(parts)
			return nil
		}
		if !tooBig(err) || per == 1 {
			return err
		}
		per = max(per*2/3, 1)
	}
}

func (m *MeshAnnouncer) announceAll(parts []*announce.Service) error {
	for _, p := range parts {
		if err := m.Node.Announce(announce.Announcement{Kind: announce.KindService, Service: p}); err != nil {
			return err
		}
	}
	return nil
}

// tooBig recognises announce.Signer's size error (it has no sentinel error).
func tooBig(err error) bool {
	return strings.Contains(err.Error(), "bytes, more than")
}

func partName(name string, i int) string {
	if i == 0 {
		return name
	}
	return name + partSep + strconv.Itoa(i)
}

// splitExport encodes e as announcements of at most per endpoints each.
func splitExport(e resolve.Export, per int) []*announce.Service {
	n := max((len(e.Endpoints)+per-1)/per, 1)
	first := e
	first.Endpoints = e.Endpoints[:min(per, len(e.Endpoints))]
	head := ToAnnouncement(first)
	if n == 1 {
		return []*announce.Service{head}
	}
	head.Type += ";parts=" + strconv.Itoa(n)
	out := []*announce.Service{head}
	base, _, _ := strings.Cut(head.Type, ";")
	for i := 1; i < n; i++ {
		chunk := resolve.Export{Namespace: e.Namespace, Name: e.Name, Type: base,
			Endpoints: e.Endpoints[i*per : min((i+1)*per, len(e.Endpoints))]}
		s := ToAnnouncement(chunk)
		s.Name = partName(e.Name, i)
		t, rest, _ := strings.Cut(s.Type, ";")
		s.Type = t + ";part=" + strconv.Itoa(i)
		if rest != "" {
			s.Type += ";" + rest
		}
		out = append(out, s)
	}
	return out
}

func (m *MeshAnnouncer) withdrawOne(namespace, name string) error {
	return m.Node.Announce(announce.Announcement{Kind: announce.KindService, Withdraw: true,
		Service: &announce.Service{Namespace: namespace, Name: name}})
}

// Withdraw retracts this node's announcements of namespace/name (all parts).
func (m *MeshAnnouncer) Withdraw(namespace, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := namespace + "/" + name
	var errs []error
	for i := range max(m.parts[key], 1) {
		errs = append(errs, m.withdrawOne(namespace, partName(name, i)))
	}
	delete(m.parts, key)
	return errors.Join(errs...)
}

// memberLister is implemented by *mesh.Node: serf's view of the members.
type memberLister interface {
	Members() []mesh.Member
}

// Exports lists the accepted service announcements, parts reassembled. When several
// nodes of one cluster announced the same service (a leader change), the newest
// announcement of each part counts. When the node can list members (a *mesh.Node does),
// announcements of an origin serf has declared failed are left out at once, without
// waiting for them to expire (the TTL is minutes by default; failure detection takes
// seconds), and count again when the origin is alive.
func (m *MeshAnnouncer) Exports() (uint64, []resolve.Export) {
	st := m.Node.State()
	h := fnv.New64a()
	fmt.Fprintf(h, "%d", st.Version())
	down := map[string]bool{}
	if ml, ok := m.Node.(memberLister); ok {
		for _, mem := range ml.Members() { // sorted by name
			if mem.Status == "failed" {
				down[mem.Cluster+"/"+mem.Name] = true
				fmt.Fprintf(h, ";%s/%s", mem.Cluster, mem.Name)
			}
		}
	}
	v := h.Sum64()
	newest := map[string]announce.Announcement{}
	for _, a := range st.List() {
		if a.Kind != announce.KindService || a.Service == nil || a.Withdraw || down[a.Cluster+"/"+a.Origin] {
			continue
		}
		k := a.Cluster + "/" + a.Service.Namespace + "/" + a.Service.Name
		if old, ok := newest[k]; !ok || a.Seq > old.Seq {
			newest[k] = a
		}
	}
	heads := map[string]*resolve.Export{}
	count := map[string]int{}
	for _, k := range slices.Sorted(maps.Keys(newest)) {
		a := newest[k]
		if strings.Contains(a.Service.Name, partSep) {
			continue
		}
		e := FromAnnouncement(a.Cluster, a.Service)
		heads[k] = &e
		count[k] = 1
		for _, kv := range strings.Split(a.Service.Type, ";")[1:] {
			if n, ok := strings.CutPrefix(kv, "parts="); ok {
				count[k], _ = strconv.Atoi(n)
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(newest)) {
		a := newest[k]
		base, idx, ok := strings.Cut(a.Service.Name, partSep)
		if !ok {
			continue
		}
		hk := a.Cluster + "/" + a.Service.Namespace + "/" + base
		i, err := strconv.Atoi(idx)
		if h := heads[hk]; h != nil && err == nil && i > 0 && i < count[hk] {
			h.Endpoints = append(h.Endpoints, FromAnnouncement(a.Cluster, a.Service).Endpoints...)
		}
	}
	out := make([]resolve.Export, 0, len(heads))
	for _, k := range slices.Sorted(maps.Keys(heads)) {
		e := heads[k]
		slices.SortFunc(e.Endpoints, func(a, b resolve.Endpoint) int { return a.Addr.Compare(b.Addr) })
		out = append(out, *e)
	}
	return v, out
}

// ToAnnouncement encodes e for the mesh.
func ToAnnouncement(e resolve.Export) *announce.Service {
	s := &announce.Service{Namespace: e.Namespace, Name: e.Name}
	typ := cmp.Or(e.Type, resolve.TypeClusterSetIP)
	var nr []string
	for i, ep := range e.Endpoints {
		s.Endpoints = append(s.Endpoints, ep.Addr)
		if !ep.Ready {
			nr = append(nr, strconv.Itoa(i))
		}
	}
	if e.SessionAffinity != "" && e.SessionAffinity != resolve.AffinityNone {
		typ += ";sa=" + e.SessionAffinity
		if e.AffinityTimeout != 0 {
			typ += ";sat=" + strconv.Itoa(int(e.AffinityTimeout))
		}
	}
	if !e.ExportedAt.IsZero() {
		typ += ";at=" + strconv.FormatInt(e.ExportedAt.UnixMilli(), 10)
	}
	if len(nr) > 0 {
		typ += ";nr=" + strings.Join(nr, ",")
	}
	var tp []string
	for i, p := range e.Ports {
		s.Ports = append(s.Ports, announce.Port{Name: p.Name, Port: uint16(p.Port), Protocol: p.Protocol})
		if p.TargetPort != 0 && p.TargetPort != p.Port {
			tp = append(tp, fmt.Sprintf("%d:%d", i, p.TargetPort))
		}
	}
	if len(tp) > 0 {
		typ += ";tp=" + strings.Join(tp, ",")
	}
	if e.QoSClass != "" {
		typ += ";qc=" + e.QoSClass
	}
	if e.InternalTrafficPolicy != "" {
		typ += ";itp=" + e.InternalTrafficPolicy
	}
	if e.TrafficDistribution != "" {
		typ += ";td=" + e.TrafficDistribution
	}
	s.Type = typ
	return s
}

// FromAnnouncement decodes a service announcement of cluster. Unknown suffix fields are
// ignored (a newer sender), malformed ones too: the export still carries its ports and
// endpoints.
func FromAnnouncement(cluster string, s *announce.Service) resolve.Export {
	e := resolve.Export{Cluster: cluster, Namespace: s.Namespace, Name: s.Name, SessionAffinity: resolve.AffinityNone}
	parts := strings.Split(s.Type, ";")
	e.Type = cmp.Or(parts[0], resolve.TypeClusterSetIP)
	notReady := map[int]bool{}
	target := map[int]int32{}
	for _, kv := range parts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "sa":
			e.SessionAffinity = v
		case "sat":
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				e.AffinityTimeout = int32(n)
			}
		case "qc":
			if c, err := qos.ParseClass(v); err == nil {
				e.QoSClass = string(c)
			}
		case "itp":
			e.InternalTrafficPolicy = v
		case "td":
			e.TrafficDistribution = v
		case "at":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				e.ExportedAt = time.UnixMilli(n).UTC()
			}
		case "tp":
			for _, it := range strings.Split(v, ",") {
				i, n, _ := strings.Cut(it, ":")
				ii, err1 := strconv.Atoi(i)
				nn, err2 := strconv.ParseUint(n, 10, 16)
				if err1 == nil && err2 == nil {
					target[ii] = int32(nn)
				}
			}
		case "nr":
			for _, i := range strings.Split(v, ",") {
				if n, err := strconv.Atoi(i); err == nil {
					notReady[n] = true
				}
			}
		}
	}
	for i, a := range s.Endpoints {
		e.Endpoints = append(e.Endpoints, resolve.Endpoint{Addr: a, Ready: !notReady[i]})
	}
	for i, p := range s.Ports {
		e.Ports = append(e.Ports, resolve.Port{Name: p.Name, Port: int32(p.Port), Protocol: p.Protocol, TargetPort: target[i]})
	}
	return e
}

// Bus is an in-memory Announcer shared by several controllers in one process: a stand-in
// for the mesh in unit tests of the controller logic. Expire removes a cluster's exports
// as an expired mesh announcement would.
type Bus struct {
	mu      sync.Mutex
	version uint64
	exports map[string]resolve.Export // cluster/ns/name
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{exports: map[string]resolve.Export{}} }

// For returns the Announcer of cluster on the bus.
func (b *Bus) For(cluster string) Announcer { return busClient{b, cluster} }

// Expire drops every export of cluster.
func (b *Bus) Expire(cluster string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, e := range b.exports {
		if e.Cluster == cluster {
			delete(b.exports, k)
		}
	}
	b.version++
}

type busClient struct {
	b       *Bus
	cluster string
}

func (c busClient) Publish(e resolve.Export) error {
	if e.Namespace == "" || e.Name == "" {
		return errors.New("bus: export without namespace/name")
	}
	e.Cluster = c.cluster
	e.Ports, e.Endpoints = slices.Clone(e.Ports), slices.Clone(e.Endpoints)
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.b.exports[fmt.Sprintf("%s/%s/%s", c.cluster, e.Namespace, e.Name)] = e
	c.b.version++
	return nil
}

func (c busClient) Withdraw(namespace, name string) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	delete(c.b.exports, fmt.Sprintf("%s/%s/%s", c.cluster, namespace, name))
	c.b.version++
	return nil
}

func (c busClient) Exports() (uint64, []resolve.Export) {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	out := make([]resolve.Export, 0, len(c.b.exports))
	for _, k := range slices.Sorted(maps.Keys(c.b.exports)) {
		out = append(out, c.b.exports[k])
	}
	return c.b.version, out
}
