// Package resolve is the pure logic of Multi-Cluster Services (KEP-1645): merging the
// exports of one service from every cluster of the clusterset into the properties of its
// ServiceImport, reporting conflicts the way the KEP prescribes (the oldest export wins
// type and session affinity; ports are the union, a port whose definition differs between
// clusters is taken from the oldest export, and ports that differ at all are a conflict), and choosing the ClusterSetIP of an import
// deterministically from its namespace and name so that every cluster picks the same
// address when it can. No Kubernetes client, no network, no clock.
package resolve

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Service types of a ServiceImport.
const (
	TypeClusterSetIP = "ClusterSetIP"
	TypeHeadless     = "Headless"
)

// Session affinity values (as core/v1 spells them).
const (
	AffinityNone     = "None"
	AffinityClientIP = "ClientIP"
)

// Port is one exported service port.
type Port struct {
	Name     string
	Port     int32
	Protocol string // TCP | UDP | SCTP; empty means TCP
	// TargetPort is the endpoints' port in the exporting cluster (0: same as Port). It is
	// per cluster, so it is never part of the merged import nor of a conflict.
	TargetPort int32
}

func (p Port) proto() string {
	if p.Protocol == "" {
		return "TCP"
	}
	return p.Protocol
}

func (p Port) String() string {
	s := fmt.Sprintf("%d/%s", p.Port, p.proto())
	if p.Name != "" {
		s = p.Name + "=" + s
	}
	return s
}

// Endpoint is one backend address of an exporting cluster.
type Endpoint struct {
	Addr  netip.Addr
	Ready bool
}

// Export is one cluster's export of a service, as it travels between clusters.
type Export struct {
	Cluster   string
	Namespace string
	Name      string
	Type      string // TypeClusterSetIP | TypeHeadless
	// SessionAffinity is AffinityNone or AffinityClientIP; AffinityTimeout is in seconds
	// (0 = the Kubernetes default) and only meaningful with ClientIP.
	SessionAffinity string
	AffinityTimeout int32
	Ports           []Port
	Endpoints       []Endpoint
	// ExportedAt is the ServiceExport's creation time: the oldest export wins conflicts.
	ExportedAt time.Time
	// QoSClass is the QoS class the exported Service's labels ask for (key
	// patronus.io/qos-class); "" for none.
	QoSClass string
	// InternalTrafficPolicy and TrafficDistribution are the exported Service's
	// (spec.internalTrafficPolicy, spec.trafficDistribution; "" when unset): the KEP
	// carries them to the ServiceImport.
	InternalTrafficPolicy string
	TrafficDistribution   string
}

// Key is namespace/name.
func (e Export) Key() string { return e.Namespace + "/" + e.Name }

func (e Export) affinity() string {
	if e.SessionAffinity == "" {
		return AffinityNone
	}
	return e.SessionAffinity
}

// Conflict reasons (the KEP's Conflict condition reasons, as sigs.k8s.io/mcs-api v1beta1
// names them).
const (
	ReasonPortConflict                  = "PortConflict"
	ReasonTypeConflict                  = "TypeConflict"
	ReasonSessionAffinityConflict       = "SessionAffinityConflict"
	ReasonSessionAffinityConfigConflict = "SessionAffinityConfigConflict"
	ReasonInternalTrafficPolicyConflict = "InternalTrafficPolicyConflict"
	ReasonTrafficDistributionConflict   = "TrafficDistributionConflict"
)

// Conflict is one disagreement between exports, reported on every export of the service.
type Conflict struct {
	Reason  string
	Message string
}

// Import is the merged view of a service exported by one or more clusters.
type Import struct {
	Namespace, Name string
	Type            string
	SessionAffinity string
	AffinityTimeout int32
	Ports           []Port   // union, sorted by port, protocol, name
	Clusters        []string // exporting clusters, sorted
	// Winner is the cluster whose export is the oldest (decides contested properties).
	Winner    string
	Conflicts []Conflict
	// QoSClass is the class of the oldest export that names one ("" for none): traffic to
	// the ClusterSetIP takes it unless the client pod names its own.
	QoSClass string
	// InternalTrafficPolicy and TrafficDistribution are the oldest export's.
	InternalTrafficPolicy string
	TrafficDistribution   string
}

// Merge resolves the exports of one service (all with the same namespace/name; at most
// one per cluster). It panics on an empty slice: there is no import without an export.
func Merge(exports []Export) Import {
	ex := slices.Clone(exports)
	// Oldest first; ties (same second, clocks of different clusters) broken by cluster
	// name so every cluster reaches the same answer.
	slices.SortFunc(ex, func(a, b Export) int {
		if c := a.ExportedAt.Compare(b.ExportedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Cluster, b.Cluster)
	})
	win := ex[0]
	im := Import{Namespace: win.Namespace, Name: win.Name, Type: win.Type, SessionAffinity: win.affinity(),
		Winner: win.Cluster, InternalTrafficPolicy: win.InternalTrafficPolicy, TrafficDistribution: win.TrafficDistribution}
	if im.Type == "" {
		im.Type = TypeClusterSetIP
	}
	if im.SessionAffinity == AffinityClientIP {
		im.AffinityTimeout = win.AffinityTimeout
	}
	var typeOff, affOff, affCfgOff, itpOff, tdOff []string
	for _, e := range ex {
		im.Clusters = append(im.Clusters, e.Cluster)
		t := cmp.Or(e.Type, TypeClusterSetIP)
		if t != im.Type {
			typeOff = append(typeOff, fmt.Sprintf("%s exports %s", e.Cluster, t))
		}
		if e.affinity() != im.SessionAffinity {
			affOff = append(affOff, fmt.Sprintf("%s exports %s", e.Cluster, e.affinity()))
		} else if im.SessionAffinity == AffinityClientIP && e.AffinityTimeout != im.AffinityTimeout {
			affCfgOff = append(affCfgOff, fmt.Sprintf("%s exports a timeout of %ds", e.Cluster, e.AffinityTimeout))
		}
		if e.InternalTrafficPolicy != im.InternalTrafficPolicy {
			itpOff = append(itpOff, fmt.Sprintf("%s exports %q", e.Cluster, e.InternalTrafficPolicy))
		}
		if e.TrafficDistribution != im.TrafficDistribution {
			tdOff = append(tdOff, fmt.Sprintf("%s exports %q", e.Cluster, e.TrafficDistribution))
		}
	}
	slices.Sort(im.Clusters)
	// conflict reports one property the exports disagree on: the oldest export's value
	// (using) wins, off lists the others, hint (if any) says how to fix it.
	conflict := func(reason, what, using string, off []string, hint string) {
		if len(off) > 0 {
			im.Conflicts = append(im.Conflicts, Conflict{reason, fmt.Sprintf(
				"%s differs between clusters: using %s from the oldest export (cluster %s); %s%s",
				what, using, win.Cluster, strings.Join(off, ", "), hint)})
		}
	}
	conflict(ReasonTypeConflict, "service type", im.Type, typeOff,
		". Make the Service types agree (headless or not) in every exporting cluster")
	conflict(ReasonSessionAffinityConflict, "session affinity", im.SessionAffinity, affOff,
		". Set the same spec.sessionAffinity on the Service in every exporting cluster")
	conflict(ReasonSessionAffinityConfigConflict, "session affinity timeout", fmt.Sprintf("%ds", im.AffinityTimeout), affCfgOff, "")
	conflict(ReasonInternalTrafficPolicyConflict, "internal traffic policy", strconv.Quote(im.InternalTrafficPolicy), itpOff, "")
	conflict(ReasonTrafficDistributionConflict, "traffic distribution", strconv.Quote(im.TrafficDistribution), tdOff, "")
	for _, e := range ex {
		if e.QoSClass != "" {
			im.QoSClass = e.QoSClass
			break
		}
	}
	im.Ports, im.Conflicts = mergePorts(ex, im.Conflicts)
	return im
}

// mergePorts takes the union of the exports' ports (ex is oldest first). Two ports
// collide when they share a name, or a number and protocol: the oldest export's port is
// kept and the collision reported. TCP and UDP on the same number do not collide.
// Unnamed ports all share the name "" (a Service may leave only a single port unnamed).
func mergePorts(ex []Export, conflicts []Conflict) ([]Port, []Conflict) {
	type owned struct {
		p       Port
		cluster string
	}
	var kept []owned
	var msgs []string
	for _, e := range ex {
	next:
		for _, p := range e.Ports {
			p.Protocol = p.proto()
			p.TargetPort = 0
			for _, k := range kept {
				sameName := p.Name == k.p.Name
				sameNum := p.Port == k.p.Port && p.Protocol == k.p.Protocol
				switch {
				case sameName && sameNum:
					continue next // identical: already in the union
				case sameName:
					// The same port name (also "", a single unnamed port) means different
					// things in two clusters.
					msgs = append(msgs, fmt.Sprintf("port %q is %s in %s but %s in %s (kept)",
						p.Name, p.String(), e.Cluster, k.p.String(), k.cluster))
					continue next
				case sameNum:
					msgs = append(msgs, fmt.Sprintf("port %d/%s is named %q in %s but %q in %s (kept)",
						p.Port, p.Protocol, p.Name, e.Cluster, k.p.Name, k.cluster))
					continue next
				}
			}
			kept = append(kept, owned{p, e.Cluster})
		}
	}
	out := make([]Port, 0, len(kept))
	for _, k := range kept {
		out = append(out, k.p)
	}
	// Ports that differ between clusters are a conflict even without a collision: the
	// import serves the union, and every export that lacks some of it is told (the MCS
	// API's conformance suite requires the Conflict condition here).
	for _, e := range ex {
		var missing []string
		for _, u := range out {
			if !slices.ContainsFunc(e.Ports, func(p Port) bool {
				return p.Name == u.Name && p.Port == u.Port && p.proto() == u.Protocol
			}) {
				missing = append(missing, u.String())
			}
		}
		if len(missing) > 0 {
			msgs = append(msgs, fmt.Sprintf("%s does not export %s", e.Cluster, strings.Join(missing, ", ")))
		}
	}
	slices.SortFunc(out, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(a.Protocol, b.Protocol), strings.Compare(a.Name, b.Name))
	})
	if len(msgs) > 0 {
		conflicts = append(conflicts, Conflict{ReasonPortConflict, fmt.Sprintf(
			"ports differ between clusters, the oldest export wins: %s. Give each port the same name, number and protocol in every exporting cluster",
			strings.Join(msgs, "; "))})
	}
	return out, conflicts
}

// Group splits exports by namespace/name, sorted by key.
func Group(exports []Export) map[string][]Export {
	out := map[string][]Export{}
	for _, e := range exports {
		out[e.Key()] = append(out[e.Key()], e)
	}
	return out
}

// Equal reports whether two exports announce the same thing.
func (e Export) Equal(o Export) bool {
	return e.Cluster == o.Cluster && e.Namespace == o.Namespace && e.Name == o.Name && e.Type == o.Type &&
		e.SessionAffinity == o.SessionAffinity && e.AffinityTimeout == o.AffinityTimeout &&
		e.ExportedAt.Equal(o.ExportedAt) && e.QoSClass == o.QoSClass &&
		e.InternalTrafficPolicy == o.InternalTrafficPolicy && e.TrafficDistribution == o.TrafficDistribution && slices.Equal(e.Ports, o.Ports) && slices.Equal(e.Endpoints, o.Endpoints)
}
