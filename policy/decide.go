package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Flow is one connection attempt to decide. Each side is a pod ("namespace/name"), an
// address, or both (then the address is the one used for matching: a pod may have several).
type Flow struct {
	SrcPod, DstPod string
	SrcIP, DstIP   netip.Addr
	Protocol       Protocol
	Port           uint16
}

// RuleRef names one rule of one policy.
type RuleRef struct {
	Policy    string `json:"policy"`    // "namespace/name"
	Direction string `json:"direction"` // "ingress" or "egress"
	Index     int    `json:"index"`     // index in the policy's ingress or egress list
}

func (r RuleRef) String() string { return fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index) }

// Side is the decision of one direction: egress of the source, ingress of the destination.
type Side struct {
	Direction string `json:"direction"` // "egress" or "ingress"
	// Pod is the endpoint whose policy decides this side, "" when the address is not an
	// endpoint of the Set (outside the cluster, hostNetwork, or on another node when the
	// Set was compiled for one node): such a side is not isolated here.
	Pod       string    `json:"pod,omitempty"`
	Isolated  bool      `json:"isolated"`
	Policies  []string  `json:"policies,omitempty"` // policies isolating Pod in this direction
	Allowed   bool      `json:"allowed"`
	AllowedBy []RuleRef `json:"allowedBy,omitempty"` // every rule that allows the flow
}

// Verdict is the answer to Decide.
type Verdict struct {
	Allowed  bool       `json:"allowed"`
	From     string     `json:"from"` // the source as "ns/pod" or an address
	To       string     `json:"to"`
	SrcIP    netip.Addr `json:"srcIP"`
	DstIP    netip.Addr `json:"dstIP"`
	Protocol Protocol   `json:"protocol"`
	Port     uint16     `json:"port"`
	Egress   Side       `json:"egress"`
	Ingress  Side       `json:"ingress"`
}

// Decide says whether f is allowed by the compiled policy, and why. A flow is allowed
// when the source's egress allows it (or the source is not egress-isolated, or not an
// endpoint) and the destination's ingress allows it likewise. Decide reads the same
// Rules the datapaths load, so its verdict is the datapath's.
func (s *Set) Decide(f Flow) (Verdict, error) {
	src, srcIP, err := s.resolve("source", f.SrcPod, f.SrcIP)
	if err != nil {
		return Verdict{}, err
	}
	dst, dstIP, err := s.resolve("destination", f.DstPod, f.DstIP)
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{
		From: s.label(src, srcIP), To: s.label(dst, dstIP),
		SrcIP: srcIP, DstIP: dstIP, Protocol: f.Protocol, Port: f.Port,
	}
	v.Egress = decideSide("egress", src, func(ep *EndpointPolicy) []Rule { return ep.Egress },
		func(ep *EndpointPolicy) (bool, []string) { return ep.EgressIsolated, ep.EgressPolicies }, dstIP, f)
	v.Ingress = decideSide("ingress", dst, func(ep *EndpointPolicy) []Rule { return ep.Ingress },
		func(ep *EndpointPolicy) (bool, []string) { return ep.IngressIsolated, ep.IngressPolicies }, srcIP, f)
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v, nil
}

// resolve finds the endpoint and address of one side of a flow.
func (s *Set) resolve(what, name string, ip netip.Addr) (*EndpointPolicy, netip.Addr, error) {
	ip = ip.Unmap()
	if name == "" {
		if !ip.IsValid() {
			return nil, ip, fmt.Errorf("%s: neither a pod nor an address given", what)
		}
		ep, _ := s.EndpointByIP(ip)
		return ep, ip, nil
	}
	ep, ok := s.Endpoint(name)
	if !ok {
		return nil, ip, fmt.Errorf("%s: no endpoint pod %q (unknown, hostNetwork, finished or on another node)", what, name)
	}
	if !ip.IsValid() {
		if len(ep.IPs) == 0 {
			return nil, ip, fmt.Errorf("%s: pod %s has no IP address", what, name)
		}
		ip = ep.IPs[0]
	}
	return ep, ip, nil
}

func (s *Set) label(ep *EndpointPolicy, ip netip.Addr) string {
	if ep != nil {
		return ep.Name()
	}
	return ip.String()
}

func decideSide(dir string, ep *EndpointPolicy, rules func(*EndpointPolicy) []Rule,
	iso func(*EndpointPolicy) (bool, []string), remote netip.Addr, f Flow) Side {
	side := Side{Direction: dir}
	if ep == nil {
		side.Allowed = true
		return side
	}
	side.Pod = ep.Name()
	side.Isolated, side.Policies = iso(ep)
	if !side.Isolated {
		side.Allowed = true
		return side
	}
	rs := rules(ep)
	for i := range rs {
		r := &rs[i]
		if !r.Allows(remote, f.Protocol, f.Port) {
			continue
		}
		ref := RuleRef{Policy: r.Policy, Direction: dir, Index: r.Index}
		// One API rule can compile into several Rules (named ports): report it once.
		if n := len(side.AllowedBy); n == 0 || side.AllowedBy[n-1] != ref {
			side.AllowedBy = append(side.AllowedBy, ref)
		}
	}
	side.Allowed = len(side.AllowedBy) > 0
	return side
}

// String explains the verdict on one line, e.g.
// "egress: x/a not isolated; ingress: x/b isolated by x/allow-b, x/deny-all;
// rule x/allow-b ingress[0] allows from pod x/a on TCP/80 → ALLOWED".
func (v Verdict) String() string {
	var b strings.Builder
	port := fmt.Sprintf("%s/%d", v.Protocol, v.Port)
	side := func(sd Side, self, remote string, toFrom string) {
		fmt.Fprintf(&b, "%s: ", sd.Direction)
		switch {
		case sd.Pod == "":
			fmt.Fprintf(&b, "%s is not an endpoint here, not isolated", self)
		case !sd.Isolated:
			fmt.Fprintf(&b, "%s not isolated", sd.Pod)
		default:
			fmt.Fprintf(&b, "%s isolated by %s; ", sd.Pod, strings.Join(sd.Policies, ", "))
			if len(sd.AllowedBy) == 0 {
				fmt.Fprintf(&b, "no rule allows %s %s on %s", toFrom, remote, port)
			} else {
				refs := make([]string, len(sd.AllowedBy))
				for i, r := range sd.AllowedBy {
					refs[i] = r.String()
				}
				word := "rule"
				if len(refs) > 1 {
					word = "rules"
				}
				fmt.Fprintf(&b, "%s %s allows %s %s on %s", word, strings.Join(refs, ", "), toFrom, remote, port)
			}
		}
	}
	side(v.Egress, v.describe(v.From, v.SrcIP, v.Egress.Pod != ""), v.describe(v.To, v.DstIP, v.Ingress.Pod != ""), "to")
	b.WriteString("; ")
	side(v.Ingress, v.describe(v.To, v.DstIP, v.Ingress.Pod != ""), v.describe(v.From, v.SrcIP, v.Egress.Pod != ""), "from")
	if v.Allowed {
		b.WriteString(" → ALLOWED")
	} else {
		b.WriteString(" → DENIED")
	}
	return b.String()
}

func (v Verdict) describe(name string, ip netip.Addr, isPod bool) string {
	if isPod {
		return "pod " + name + " (" + ip.String() + ")"
	}
	return ip.String()
}
