package localapi

import (
	"net"

	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
)

// PodFromStore converts a database row to the API type, re-deriving the QoS details from
// the stored annotations. The CLI uses it too when the agent is not running.
func PodFromStore(r store.Pod, def qos.Class) Pod {
	p := Pod{Namespace: r.Namespace, Name: r.Name, UID: r.UID, ContainerID: r.ContainerID, IfName: r.IfName,
		HostVeth: r.HostVeth, IPs: make([]string, 0, len(r.IPs)), Labels: r.Labels,
		Synced: !r.APISyncedAt.IsZero(), SyncedAt: r.APISyncedAt}
	for _, ip := range r.IPs {
		p.IPs = append(p.IPs, ip.String())
	}
	spec, errs := qos.Parse(r.Annotations, def)
	p.QoS = QoS{Class: string(spec.Class), MaxLatencyMs: spec.MaxLatencyMs, MinBandwidthMbps: spec.MinBandwidthMbps}
	if r.QoSClass != "" {
		p.QoS.Class = r.QoSClass
	}
	for _, e := range errs {
		p.QoS.Errors = append(p.QoS.Errors, e.Error())
	}
	return p
}

// BridgeStatus reports whether the bridge exists and its addresses (stdlib only: it is
// called by the CLI as well).
func BridgeStatus(name string) Bridge {
	b := Bridge{Name: name}
	if name == "" {
		return b
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return b
	}
	b.Present = true
	addrs, _ := ifc.Addrs()
	for _, ad := range addrs {
		b.Addresses = append(b.Addresses, ad.String())
	}
	return b
}
