package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NamespaceNameLabel is the label the API server puts on every namespace, holding its name.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Input is the cluster state the compiler reads. Only labels, namespaces, pod IPs,
// container ports, hostNetwork, phase and nodeName of pods are used.
type Input struct {
	Policies   []networkingv1.NetworkPolicy
	Pods       []corev1.Pod
	Namespaces []corev1.Namespace
}

// Options tunes Compile.
type Options struct {
	// Node, when set, limits the endpoints to pods whose spec.nodeName is Node (what one
	// agent enforces). Peers are always taken from every pod of the cluster.
	Node string
	// KnownIPs gives addresses of pods ("namespace/name") whose status does not show
	// them yet: the agent knows a new pod's address from its own IPAM before the kubelet
	// reports it, and must isolate the pod (and let others' rules match it) from the
	// first packet. Used only for pods with no IP in status.
	KnownIPs map[string][]netip.Addr
}

// Set is the compiled policy of a cluster (or of one node's pods): one EndpointPolicy per
// endpoint, sorted by namespace and name.
//
// Rules of different endpoints share their Peers and Ports slices: treat them as read-only.
type Set struct {
	Endpoints []EndpointPolicy

	byName map[string]int     // "ns/name" → index in Endpoints
	byIP   map[netip.Addr]int // pod IP → index in Endpoints
}

// Endpoint returns the compiled policy of pod "namespace/name".
func (s *Set) Endpoint(nsName string) (*EndpointPolicy, bool) {
	i, ok := s.byName[nsName]
	if !ok {
		return nil, false
	}
	return &s.Endpoints[i], true
}

// EndpointByIP returns the compiled policy of the endpoint that owns addr.
func (s *Set) EndpointByIP(addr netip.Addr) (*EndpointPolicy, bool) {
	i, ok := s.byIP[addr.Unmap()]
	if !ok {
		return nil, false
	}
	return &s.Endpoints[i], true
}

// Name returns "namespace/pod".
func (e *EndpointPolicy) Name() string { return e.Namespace + "/" + e.Pod }

// pod is the part of a corev1.Pod the compiler needs.
type pod struct {
	ns, name string
	labels   map[string]string
	ips      []netip.Addr
	ports    []corev1.ContainerPort
	// endpoint: the pod has its own network namespace and is running or about to (so it
	// gets an EndpointPolicy). hostNetwork and finished pods are not endpoints.
	endpoint bool
	// peer: selectors can match it (it is an endpoint with at least one IP).
	peer bool
	node string
}

type namespace struct {
	labels map[string]string
	pods   []int // indexes into compiler.pods, in pod order
}

type compiler struct {
	pods       []pod
	namespaces map[string]*namespace
	nsNames    []string // sorted keys of namespaces
	peerCache  map[string]*podPeers
	problems   []error
}

// Compile computes the EndpointPolicy of every endpoint (every pod that is not
// hostNetwork and not finished; pods with no IP yet included, so that a pod can be
// isolated before its first packet).
//
// Policies the API server would have rejected (unknown operator, bad CIDR, bad port...)
// are compiled failing closed: the policy still isolates the pods it selects, but the
// invalid peer or port allows nothing. Two exceptions, where the policy's reach itself is
// unknown: an invalid spec.podSelector selects no pod, and an unknown policy type isolates
// nothing in that direction. Every such problem in a policy that selects an endpoint is
// reported in the returned error (errors.Join), with the Set still complete and usable;
// ValidatePolicy checks one policy on its own.
func Compile(in Input, opts Options) (*Set, error) {
	c := &compiler{
		namespaces: make(map[string]*namespace, len(in.Namespaces)),
		peerCache:  make(map[string]*podPeers),
	}
	c.loadNamespaces(in.Namespaces)
	c.loadPods(in.Pods, opts.KnownIPs)

	set := &Set{byName: make(map[string]int), byIP: make(map[netip.Addr]int)}
	endpointOf := make([]int, len(c.pods)) // pod index → index in set.Endpoints, or -1
	var podOf []int                        // index in set.Endpoints → pod index
	for i := range c.pods {
		p := &c.pods[i]
		endpointOf[i] = -1
		if !p.endpoint || (opts.Node != "" && p.node != opts.Node) {
			continue
		}
		endpointOf[i] = len(set.Endpoints)
		podOf = append(podOf, i)
		set.Endpoints = append(set.Endpoints, EndpointPolicy{Namespace: p.ns, Pod: p.name, IPs: p.ips})
	}

	pols := make([]*networkingv1.NetworkPolicy, len(in.Policies))
	for i := range in.Policies {
		pols[i] = &in.Policies[i]
	}
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(nsOf(a.Namespace), nsOf(b.Namespace)), cmp.Compare(a.Name, b.Name))
	})
	for _, np := range pols {
		c.compilePolicy(np, set, endpointOf, podOf)
	}

	for i := range set.Endpoints {
		ep := &set.Endpoints[i]
		set.byName[ep.Name()] = i
		for _, ip := range ep.IPs {
			set.byIP[ip] = i
		}
	}
	return set, errors.Join(c.problems...)
}

func nsOf(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

func (c *compiler) loadNamespaces(list []corev1.Namespace) {
	for i := range list {
		n := &list[i]
		labels := n.Labels
		if labels[NamespaceNameLabel] != n.Name {
			// The API server sets this label on every namespace; inputs read from files
			// may lack it. Copy rather than modify the caller's map.
			labels = make(map[string]string, len(n.Labels)+1)
			for k, v := range n.Labels {
				labels[k] = v
			}
			labels[NamespaceNameLabel] = n.Name
		}
		c.namespaces[n.Name] = &namespace{labels: labels}
	}
}

func (c *compiler) ns(name string) *namespace {
	n, ok := c.namespaces[name]
	if !ok {
		// A namespace known only through its pods or policies: it has the default label.
		n = &namespace{labels: map[string]string{NamespaceNameLabel: name}}
		c.namespaces[name] = n
	}
	return n
}

func (c *compiler) loadPods(list []corev1.Pod, known map[string][]netip.Addr) {
	c.pods = make([]pod, 0, len(list))
	for i := range list {
		in := &list[i]
		p := pod{
			ns:     nsOf(in.Namespace),
			name:   in.Name,
			labels: in.Labels,
			node:   in.Spec.NodeName,
			endpoint: !in.Spec.HostNetwork &&
				in.Status.Phase != corev1.PodSucceeded && in.Status.Phase != corev1.PodFailed,
		}
		for _, ctr := range in.Spec.Containers {
			p.ports = append(p.ports, ctr.Ports...)
		}
		p.ips = podIPs(in, func(err error) { c.problemf("pod %s/%s: %w", p.ns, p.name, err) })
		if len(p.ips) == 0 && len(known) > 0 {
			for _, a := range known[p.ns+"/"+p.name] {
				if a = a.Unmap(); a.IsValid() && !slices.Contains(p.ips, a) {
					p.ips = append(p.ips, a)
				}
			}
		}
		p.peer = p.endpoint && len(p.ips) > 0
		c.pods = append(c.pods, p)
	}
	slices.SortFunc(c.pods, func(a, b pod) int {
		return cmp.Or(cmp.Compare(a.ns, b.ns), cmp.Compare(a.name, b.name))
	})
	for i := range c.pods {
		n := c.ns(c.pods[i].ns)
		n.pods = append(n.pods, i)
	}
	c.nsNames = make([]string, 0, len(c.namespaces))
	for name := range c.namespaces {
		c.nsNames = append(c.nsNames, name)
	}
	slices.Sort(c.nsNames)
}

// podIPs returns status.podIPs, or status.podIP when podIPs is empty, without duplicates.
func podIPs(p *corev1.Pod, report func(error)) []netip.Addr {
	var ips []netip.Addr
	add := func(field, s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			report(fmt.Errorf("%s: %w", field, err))
			return
		}
		if a = a.Unmap(); !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	for i, ip := range p.Status.PodIPs {
		add(fmt.Sprintf("status.podIPs[%d]", i), ip.IP)
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		add("status.podIP", p.Status.PodIP)
	}
	return ips
}

func (c *compiler) problemf(format string, args ...any) {
	c.problems = append(c.problems, fmt.Errorf(format, args...))
}

// compilePolicy adds np's isolation and rules to the endpoints it selects.
func (c *compiler) compilePolicy(np *networkingv1.NetworkPolicy, set *Set, endpointOf, podOf []int) {
	ns := nsOf(np.Namespace)
	name := ns + "/" + np.Name
	fail := func(field string, err error) { c.problemf("networkpolicy %s: %s: %w", name, field, err) }

	sel, err := compileSelector(&np.Spec.PodSelector)
	if err != nil {
		// We cannot tell which pods the author meant; selecting none is the only choice
		// that does not cut traffic of pods the policy may not be about.
		fail("spec.podSelector", err)
		return
	}
	ingress, egress := policyTypes(&np.Spec, func(err error) { fail("spec.policyTypes", err) })
	if !ingress && !egress {
		return
	}

	var selected []int // indexes into set.Endpoints
	for _, pi := range c.ns(ns).pods {
		if ei := endpointOf[pi]; ei >= 0 && sel.matches(c.pods[pi].labels) {
			selected = append(selected, ei)
		}
	}
	if len(selected) == 0 {
		return
	}

	if ingress {
		rules := make([]compiledRule, len(np.Spec.Ingress))
		for i := range np.Spec.Ingress {
			r := &np.Spec.Ingress[i]
			rules[i] = c.compileRule(ns, fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports, fail)
		}
		for _, ei := range selected {
			ep := &set.Endpoints[ei]
			ep.IngressIsolated = true
			ep.IngressPolicies = append(ep.IngressPolicies, name)
			pi := podOf[ei]
			for i := range rules {
				if r, ok := rules[i].ingressFor(&c.pods[pi]); ok {
					r.Policy, r.Index = name, i
					ep.Ingress = append(ep.Ingress, r)
				}
			}
		}
	}
	if egress {
		var out []Rule
		for i := range np.Spec.Egress {
			r := &np.Spec.Egress[i]
			cr := c.compileRule(ns, fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports, fail)
			for _, rule := range c.egressRules(&cr) {
				rule.Policy, rule.Index = name, i
				out = append(out, rule)
			}
		}
		out = slices.Clip(out)
		for _, ei := range selected {
			ep := &set.Endpoints[ei]
			ep.EgressIsolated = true
			ep.EgressPolicies = append(ep.EgressPolicies, name)
			ep.Egress = append(ep.Egress, out...)
		}
	}
}

// ValidatePolicy reports what in np the API server would reject and Compile would
// compile failing closed: bad selectors, CIDRs, ports, protocols or policy types. Errors
// name the field ("spec.ingress[0].ports[1]: ...").
func ValidatePolicy(np *networkingv1.NetworkPolicy) error {
	c := &compiler{namespaces: map[string]*namespace{}, peerCache: map[string]*podPeers{}}
	var errs []error
	fail := func(field string, err error) { errs = append(errs, fmt.Errorf("%s: %w", field, err)) }
	if _, err := compileSelector(&np.Spec.PodSelector); err != nil {
		fail("spec.podSelector", err)
	}
	policyTypes(&np.Spec, func(err error) { fail("spec.policyTypes", err) })
	ns := nsOf(np.Namespace)
	for i := range np.Spec.Ingress {
		r := &np.Spec.Ingress[i]
		c.compileRule(ns, fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports, fail)
	}
	for i := range np.Spec.Egress {
		r := &np.Spec.Egress[i]
		c.compileRule(ns, fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports, fail)
	}
	return errors.Join(errs...)
}

// policyTypes applies the API defaults: Ingress always, Egress when egress rules exist.
func policyTypes(spec *networkingv1.NetworkPolicySpec, report func(error)) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			report(fmt.Errorf("unknown policy type %q: use Ingress or Egress", t))
		}
	}
	return ingress, egress
}

// compiledRule is one ingress or egress rule with its peers resolved to addresses and its
// ports split into numeric ranges and names still to resolve.
type compiledRule struct {
	anyPeer  bool   // no from/to: every address
	peers    []Peer // otherwise these (empty: the rule matches nothing)
	peerPods []int  // pods behind peers selected by selectors (for egress named ports)
	ipBlocks []Peer // the ipBlock peers (for egress named ports)

	anyPort bool        // no ports: every port of every protocol
	numeric []PortRange // ports given by number (or protocol only)
	named   []namedPort // ports given by name
}

type namedPort struct {
	name  string
	proto Protocol
}

func (c *compiler) compileRule(ns, field, peerField string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, fail func(string, error)) compiledRule {
	var r compiledRule
	r.anyPeer = len(peers) == 0
	var sets []*podPeers
	for i := range peers {
		report := func(err error) { fail(fmt.Sprintf("%s.%s[%d]", field, peerField, i), err) }
		p := &peers[i]
		if p.IPBlock != nil {
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				report(errors.New("ipBlock cannot be combined with podSelector or namespaceSelector"))
				continue
			}
			peer, err := parseIPBlock(p.IPBlock)
			if err != nil {
				report(fmt.Errorf("ipBlock: %w", err))
				continue
			}
			r.ipBlocks = append(r.ipBlocks, peer)
			continue
		}
		if set := c.selectorPeers(ns, p, report); set != nil {
			sets = append(sets, set)
		}
	}
	if len(sets) == 1 && len(r.ipBlocks) == 0 {
		// The common case: share the cached slices (read-only from here on).
		r.peers, r.peerPods = sets[0].peers, sets[0].pods
	} else {
		for _, set := range sets {
			r.peers = append(r.peers, set.peers...)
			r.peerPods = append(r.peerPods, set.pods...)
		}
		r.peers = append(r.peers, r.ipBlocks...)
		r.peers = slices.Clip(r.peers)
	}
	r.anyPort = len(ports) == 0
	for i := range ports {
		if err := r.addPort(&ports[i]); err != nil {
			fail(fmt.Sprintf("%s.ports[%d]", field, i), err)
		}
	}
	r.numeric = slices.Clip(r.numeric)
	return r
}

// podPeers is what one selector peer selects: its pods, and their addresses as peers.
type podPeers struct {
	peers []Peer
	pods  []int
}

// selectorPeers evaluates a podSelector/namespaceSelector peer. Results are cached by
// selector text: policies in a cluster repeat the same few selectors, and sharing the
// slices keeps the compiled set small.
func (c *compiler) selectorPeers(ns string, p *networkingv1.NetworkPolicyPeer, fail func(error)) *podPeers {
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		fail(errors.New("a peer needs podSelector, namespaceSelector or ipBlock"))
		return nil
	}
	podSel := selector{} // nil podSelector: every pod of the selected namespaces
	if p.PodSelector != nil {
		s, err := compileSelector(p.PodSelector)
		if err != nil {
			fail(fmt.Errorf("podSelector: %w", err))
			return nil
		}
		podSel = s
	}
	var nsSel selector
	var key strings.Builder
	if p.NamespaceSelector == nil {
		// A podSelector alone means pods of the policy's own namespace.
		key.WriteString("ns=")
		key.WriteString(ns)
	} else {
		s, err := compileSelector(p.NamespaceSelector)
		if err != nil {
			fail(fmt.Errorf("namespaceSelector: %w", err))
			return nil
		}
		nsSel = s
		key.WriteString("nsSel=")
		nsSel.writeKey(&key)
	}
	key.WriteString("\x00podSel=")
	podSel.writeKey(&key)
	if set, ok := c.peerCache[key.String()]; ok {
		return set
	}

	set := &podPeers{}
	addPods := func(n *namespace) {
		for _, pi := range n.pods {
			pd := &c.pods[pi]
			if !pd.peer || !podSel.matches(pd.labels) {
				continue
			}
			set.pods = append(set.pods, pi)
			for _, ip := range pd.ips {
				set.peers = append(set.peers, Peer{Prefix: netip.PrefixFrom(ip, ip.BitLen())})
			}
		}
	}
	if p.NamespaceSelector == nil {
		addPods(c.ns(ns))
	} else {
		for _, name := range c.nsNames {
			if n := c.namespaces[name]; nsSel.matches(n.labels) {
				addPods(n)
			}
		}
	}
	set.peers, set.pods = slices.Clip(set.peers), slices.Clip(set.pods)
	c.peerCache[key.String()] = set
	return set
}

func parseIPBlock(b *networkingv1.IPBlock) (Peer, error) {
	prefix, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return Peer{}, fmt.Errorf("cidr: %w", err)
	}
	prefix = prefix.Masked()
	peer := Peer{Prefix: prefix}
	for i, s := range b.Except {
		e, err := netip.ParsePrefix(s)
		if err != nil {
			return Peer{}, fmt.Errorf("except[%d]: %w", i, err)
		}
		e = e.Masked()
		if e.Addr().Is4() != prefix.Addr().Is4() || e.Bits() < prefix.Bits() || !prefix.Contains(e.Addr()) {
			return Peer{}, fmt.Errorf("except[%d]: %s is not inside cidr %s", i, s, b.CIDR)
		}
		peer.Except = append(peer.Except, e)
	}
	return peer, nil
}

func (r *compiledRule) addPort(p *networkingv1.NetworkPolicyPort) error {
	proto, err := protocolOf(p.Protocol)
	if err != nil {
		return fmt.Errorf("protocol: %w", err)
	}
	if p.Port == nil {
		if p.EndPort != nil {
			return errors.New("endPort needs port")
		}
		r.numeric = append(r.numeric, PortRange{Protocol: proto})
		return nil
	}
	if p.Port.Type == intstr.String {
		name := p.Port.StrVal
		if !validPortName(name) {
			return fmt.Errorf("port: %q is neither a number nor a port name", name)
		}
		if p.EndPort != nil {
			return errors.New("endPort cannot be used with a named port")
		}
		r.named = append(r.named, namedPort{name: name, proto: proto})
		return nil
	}
	first := p.Port.IntVal
	if first < 1 || first > 65535 {
		return fmt.Errorf("port: %d is not in 1-65535", first)
	}
	last := first
	if p.EndPort != nil {
		last = *p.EndPort
		if last < first || last > 65535 {
			return fmt.Errorf("endPort: %d must be between port (%d) and 65535", last, first)
		}
	}
	r.numeric = append(r.numeric, PortRange{Protocol: proto, First: uint16(first), Last: uint16(last)})
	return nil
}

// validPortName checks the IANA service name syntax the API requires: 1-15 lower-case
// letters, digits and inner single hyphens, with at least one letter.
func validPortName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	letter := false
	for _, ch := range s {
		switch {
		case ch >= 'a' && ch <= 'z':
			letter = true
		case ch >= '0' && ch <= '9', ch == '-':
		default:
			return false
		}
	}
	return letter
}

// resolveNamed returns the ports of p that carry one of names, as single-port ranges.
func resolveNamed(names []namedPort, p *pod) []PortRange {
	var out []PortRange
	for _, n := range names {
		for _, cp := range p.ports {
			proto := TCP
			if cp.Protocol != "" {
				var err error
				if proto, err = protocolOf(&cp.Protocol); err != nil {
					continue
				}
			}
			if cp.Name == n.name && proto == n.proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
				pr := PortRange{Protocol: proto, First: uint16(cp.ContainerPort), Last: uint16(cp.ContainerPort)}
				if !slices.Contains(out, pr) {
					out = append(out, pr)
				}
			}
		}
	}
	return out
}

func (r *compiledRule) inIPBlock(a netip.Addr) bool {
	return slices.ContainsFunc(r.ipBlocks, func(p Peer) bool { return p.Contains(a) })
}

// ingressFor returns the Rule of r for destination pod p; false when it allows nothing
// (no peer matched, or every port was a name p does not have).
func (r *compiledRule) ingressFor(p *pod) (Rule, bool) {
	if !r.anyPeer && len(r.peers) == 0 {
		return Rule{}, false
	}
	rule := Rule{Peers: r.peers}
	if r.anyPort {
		return rule, true
	}
	rule.Ports = r.numeric
	if len(r.named) > 0 {
		if resolved := resolveNamed(r.named, p); len(resolved) > 0 {
			rule.Ports = append(slices.Clip(r.numeric), resolved...)
		}
	}
	// A rule whose ports all failed to resolve must not become "every port".
	return rule, len(rule.Ports) > 0
}

// egressRules compiles r for any source: numeric ports apply to every peer, named ports
// are resolved against each destination pod, grouping pods whose names resolve alike.
func (c *compiler) egressRules(r *compiledRule) []Rule {
	if !r.anyPeer && len(r.peers) == 0 {
		return nil
	}
	if r.anyPort {
		return []Rule{{Peers: r.peers}}
	}
	var out []Rule
	if len(r.numeric) > 0 {
		out = append(out, Rule{Peers: r.peers, Ports: r.numeric})
	}
	if len(r.named) == 0 {
		return out
	}
	// Destination pods a named port can resolve on: the selected pods (all their IPs are
	// peers), every pod with an IP in an ipBlock (minus except; only those IPs), or every
	// pod when the rule has no peers.
	const (
		notCandidate = iota
		allIPs       // a selected pod: every IP of it is a peer
		someIPs      // a pod with an IP in an ipBlock: only those IPs are peers
	)
	candidates := make([]uint8, len(c.pods)) // indexed like c.pods, so iteration is in pod order
	if r.anyPeer {
		for i := range c.pods {
			if c.pods[i].peer {
				candidates[i] = allIPs
			}
		}
	} else {
		for _, pi := range r.peerPods {
			candidates[pi] = allIPs
		}
		if len(r.ipBlocks) > 0 {
			for i := range c.pods {
				if c.pods[i].peer && candidates[i] == notCandidate && slices.ContainsFunc(c.pods[i].ips, r.inIPBlock) {
					candidates[i] = someIPs
				}
			}
		}
	}
	var byName []Rule
	groups := map[string]int{} // resolved ports, as a key → index in byName
	var key []byte
	for pi, cand := range candidates {
		if cand == notCandidate {
			continue
		}
		p := &c.pods[pi]
		ports := resolveNamed(r.named, p)
		if len(ports) == 0 {
			continue
		}
		key = key[:0]
		for _, pr := range ports {
			key = append(key, byte(pr.Protocol), byte(pr.First>>8), byte(pr.First), byte(pr.Last>>8), byte(pr.Last))
		}
		gi, ok := groups[string(key)]
		if !ok {
			gi = len(byName)
			groups[string(key)] = gi
			byName = append(byName, Rule{Ports: ports})
		}
		for _, ip := range p.ips {
			if cand == allIPs || r.inIPBlock(ip) {
				byName[gi].Peers = append(byName[gi].Peers, Peer{Prefix: netip.PrefixFrom(ip, ip.BitLen())})
			}
		}
	}
	for _, rule := range byName {
		// Empty Peers would mean "any address": a named-port group never means that.
		if len(rule.Peers) > 0 {
			out = append(out, rule)
		}
	}
	return out
}
