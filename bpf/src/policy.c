// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Patronus NetworkPolicy datapath: TC programs for a pod's host-side veth (and,
// optionally, the node's uplinks) that decide, per new flow, whether the compiled
// NetworkPolicy rules of the endpoints involved allow it, track allowed flows so that
// replies pass, count and report denials, and set skb->priority from the pod's QoS class.
//
// Addresses are kept as 16 bytes everywhere: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d),
// so one set of maps and one code path serve both families.
//
// Rule matching: the userspace compiler groups an endpoint's rules into "classes" (at
// most MAX_CLASSES per endpoint and direction; rules with identical port sets share a
// class). A CIDR LPM trie maps every boundary prefix to the bitmask of classes whose
// peers contain it (excepts already subtracted), a port LPM trie maps
// (protocol, port block) to the bitmask of classes allowing it. A flow is allowed iff
// the two masks intersect. Both lookups are single LPM lookups whatever the number of
// rules, which is what makes 1,000 rules cost the same as one.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define CLASS_WORDS 4 /* 256 classes per endpoint and direction */

#define DIR_INGRESS 0 /* toward the pod */
#define DIR_EGRESS 1  /* from the pod */

#define EP_F_INGRESS_ISOLATED (1 << 0)
#define EP_F_EGRESS_ISOLATED (1 << 1)
#define EP_F_AUDIT_ALLOW (1 << 2) /* also report allowed new flows */

/* Allowed packets return TC_ACT_UNSPEC (TCX_NEXT): the next program on the hook (a
 * TCX chain or the next cls_bpf filter) still runs; denied ones TC_ACT_SHOT. */

#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

#define CT_TIMEOUT_TCP_NS (6ULL * 3600 * 1000000000ULL)
#define CT_TIMEOUT_OTHER_NS (120ULL * 1000000000ULL)
#define CT_REFRESH_NS (1000000000ULL)

#define IPPROTO_ICMPV6_ 58
#define AF_INET_ 2
#define AF_INET6_ 10

struct endpoint {
	__u32 set_id;   /* rule set of this endpoint in the cidrs/ports tries */
	__u32 flags;    /* EP_F_* */
	__u32 priority; /* skb->priority for packets from the pod; 0 leaves it */
	__u32 ifindex;  /* host-side veth */
	__u64 hash;     /* userspace: hash of the compiled rules, to skip unchanged endpoints */
};

struct classes {
	__u64 w[CLASS_WORDS];
};

struct cidr_key {
	__u32 prefixlen; /* 64 (set_id, dir, pad) + address bits */
	__u32 set_id;
	__u8 dir;
	__u8 pad[3];
	__u8 addr[16];
};

struct port_key {
	__u32 prefixlen; /* 40 = all protocols, 48 = all ports of proto, 64 = one port */
	__u32 set_id;
	__u8 dir;
	__u8 proto;
	__be16 port;
};

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 ifindex; /* conntrack is per check point: one veth sees a flow once per direction */
};

struct ct_val {
	__u64 last_seen;
	__u8 dir; /* direction, at this check point, of the packet that created the entry */
	__u8 pad[7];
};

struct deny_key {
	__u32 ifindex; /* endpoint whose policy denied */
	__u32 dir;
};

struct defer_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 verdict;
	__u8 pad;
	__u32 ifindex; /* endpoint whose policy decided */
	__u32 set_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(key_size, 16); /* pod address */
	__type(value, struct endpoint);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_endpoint_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cidr_key);
	__type(value, struct classes);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct port_key);
	__type(value, struct classes);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_ports SEC(".maps");

/* Destinations (Service CIDRs) whose egress check waits until after DNAT. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct defer_key);
	__type(value, __u8);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_egress_defer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct deny_key);
	__type(value, __u64);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_denies SEC(".maps");

/* Last time a denial of this flow was reported: a flood of denied packets (a UDP
 * stream, SYN retries) is counted in full but reported once a second per flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_deny_seen SEC(".maps");

/* Index 0: events lost because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_events SEC(".maps");

/* Emit BTF for the event type userspace decodes (bpf2go -type event). */
const struct event *unused_event __attribute__((unused));

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 syn; /* TCP SYN without ACK: always a new connection */
};

/* l4_ports fills ports (and, for TCP, syn) from the transport header at l4 in the linear
 * data. Returns 0 if those bytes are not there (the caller takes the general path). */
static __always_inline int l4_ports(struct pkt *p, void *l4, void *data_end)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return 0;
		p->sport = th->source;
		p->dport = th->dest;
		p->syn = th->syn && !th->ack;
		return 1;
	}
	if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
		__be16 *pp = l4;

		if ((void *)(pp + 2) > data_end)
			return 0;
		p->sport = pp[0];
		p->dport = pp[1];
	}
	return 1;
}

/* parse_direct is parse's fast path: the headers read straight from the skb's linear
 * data (where they are for nearly every packet at TC), no helper call per field.
 * Returns 1 with p filled, 0 when the general path must decide (headers not linear,
 * IPv6 ICMP, not IP). */
static __always_inline int parse_direct(struct __sk_buff *skb, struct pkt *p, __u32 l2len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l2len;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return 0;
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return 0;
		__builtin_memset(p, 0, sizeof(*p));
		p->saddr[10] = 0xff;
		p->saddr[11] = 0xff;
		p->daddr[10] = 0xff;
		p->daddr[11] = 0xff;
		__builtin_memcpy(&p->saddr[12], &ip->saddr, 4);
		__builtin_memcpy(&p->daddr[12], &ip->daddr, 4);
		p->proto = ip->protocol;
		if (ip->frag_off & bpf_htons(0x1fff))
			return 1; /* non-first fragment: no ports (see parse) */
		return l4_ports(p, (void *)ip + ihl, data_end);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2len;

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr == IPPROTO_ICMPV6_)
			return 0;
		__builtin_memset(p, 0, sizeof(*p));
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		p->proto = ip6->nexthdr;
		return l4_ports(p, (void *)(ip6 + 1), data_end);
	}
	return 0;
}

/* parse fills p for IPv4/IPv6 packets whose IP header follows l2len bytes of link-layer
 * header (ETH_HLEN; 0 on devices without one). Returns 0 for packets policy ignores
 * (non-IP, ICMPv6 neighbour discovery), 1 for packets to check, -1 for malformed IP
 * packets. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p, __u32 l2len)
{
	__u32 l4 = 0;
	int ports = 0;

	if (parse_direct(skb, p, l2len))
		return 1;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, l2len, &ip, sizeof(ip)) < 0)
			return -1;
		p->saddr[10] = 0xff;
		p->saddr[11] = 0xff;
		p->daddr[10] = 0xff;
		p->daddr[11] = 0xff;
		__builtin_memcpy(&p->saddr[12], &ip.saddr, 4);
		__builtin_memcpy(&p->daddr[12], &ip.daddr, 4);
		p->proto = ip.protocol;
		l4 = l2len + ip.ihl * 4;
		/* Non-first fragments carry no ports: they are checked as port 0, which only
		 * rules allowing every port of the protocol match. */
		ports = (ip.frag_off & bpf_htons(0x1fff)) == 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, l2len, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		/* Extension headers are not walked: such packets are checked with the
		 * extension header as protocol and no ports. */
		p->proto = ip6.nexthdr;
		l4 = l2len + sizeof(ip6);
		ports = 1;
		if (p->proto == IPPROTO_ICMPV6_) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, l4, &type, 1) < 0)
				return -1;
			/* Router/neighbour solicitation and advertisement, redirect: the
			 * link cannot work without them, NetworkPolicy does not cover them. */
			if (type >= 133 && type <= 137)
				return 0;
		}
	} else {
		return 0;
	}
	if (ports && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP)) {
		__be16 pp[2];
		if (bpf_skb_load_bytes(skb, l4, pp, sizeof(pp)) < 0)
			return -1;
		p->sport = pp[0];
		p->dport = pp[1];
		if (p->proto == IPPROTO_TCP) {
			__u8 flags;
			if (bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) < 0)
				return -1;
			p->syn = (flags & 0x12) == 0x02;
		}
	}
	return 1;
}

/* clock_ns is the time conntrack and the denial rate limit use: CLOCK_MONOTONIC at tick
 * resolution (bpf_ktime_get_coarse_ns, same unit and epoch as bpf_ktime_get_ns), read on
 * every packet: it reads the timekeeper's last tick instead of the clock source, whose
 * read is most of the cost of bpf_ktime_get_ns in a VM. Timeouts are seconds. */
static __always_inline __u64 clock_ns(void)
{
	return bpf_ktime_get_coarse_ns();
}

static __always_inline int rules_allow(__u32 set_id, __u8 dir, const __u8 *peer, const struct pkt *p)
{
	struct cidr_key ck = {
		.prefixlen = 64 + 128,
		.set_id = set_id,
		.dir = dir,
	};
	struct port_key pk = {
		.prefixlen = 64,
		.set_id = set_id,
		.dir = dir,
		.proto = p->proto,
		.port = p->dport,
	};
	struct classes *a, *b;

	__builtin_memcpy(ck.addr, peer, 16);
	a = bpf_map_lookup_elem(&pt_cidrs, &ck);
	if (!a)
		return 0;
	b = bpf_map_lookup_elem(&pt_ports, &pk);
	if (!b)
		return 0;
#pragma unroll
	for (int i = 0; i < CLASS_WORDS; i++)
		if (a->w[i] & b->w[i])
			return 1;
	return 0;
}

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u32 ifindex, int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (reverse) {
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->proto = p->proto;
	k->ifindex = ifindex;
}

static __always_inline int ct_live(struct ct_val *v, __u8 proto, __u64 now)
{
	__u64 timeout = proto == IPPROTO_TCP ? CT_TIMEOUT_TCP_NS : CT_TIMEOUT_OTHER_NS;
	__u64 last = v->last_seen;

	/* An entry stamped by the precise clock (an earlier program version, pinned maps
	 * survive the upgrade) lies up to a tick ahead of the coarse one: live. */
	if (now <= last)
		return last - now < CT_REFRESH_NS;
	if (now - last > timeout)
		return 0;
	/* Refresh at most once a second: writing on every packet would bounce the
	 * cache line between CPUs for nothing. */
	if (now - last > CT_REFRESH_NS)
		v->last_seen = now;
	return 1;
}

/* ct_known reports whether the packet belongs to a flow already allowed at this check
 * point: either the same direction as the packet that created the entry, or its reply. */
static __always_inline int ct_known(const struct pkt *p, __u32 ifindex, __u8 dir, __u64 now)
{
	struct ct_key k;
	struct ct_val *v;

	/* A SYN opens a new connection even if its 5-tuple was seen before: it is checked
	 * against the current rules, so a reused tuple does not inherit an old verdict. */
	if (p->syn)
		return 0;
	ct_key_of(&k, p, ifindex, 0);
	v = bpf_map_lookup_elem(&pt_conntrack, &k);
	if (v && v->dir == dir && ct_live(v, p->proto, now))
		return 1;
	ct_key_of(&k, p, ifindex, 1);
	v = bpf_map_lookup_elem(&pt_conntrack, &k);
	if (v && v->dir != dir && ct_live(v, p->proto, now))
		return 1;
	return 0;
}

static __always_inline void ct_create(const struct pkt *p, __u32 ifindex, __u8 dir, __u64 now)
{
	struct ct_key k;
	struct ct_val v = {
		.last_seen = now,
		.dir = dir,
	};

	ct_key_of(&k, p, ifindex, 0);
	bpf_map_update_elem(&pt_conntrack, &k, &v, BPF_ANY);
}

static __always_inline void report(const struct pkt *p, const struct endpoint *ep, __u8 dir, __u8 verdict, __u64 now)
{
	struct event *e = bpf_ringbuf_reserve(&pt_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&pt_stats, &zero);
		if (lost)
			(*lost)++;
		return;
	}
	e->ts_ns = bpf_ktime_get_ns(); /* events are rare: the precise clock */
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->verdict = verdict;
	e->pad = 0;
	e->ifindex = ep->ifindex;
	e->set_id = ep->set_id;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int deny(const struct pkt *p, const struct endpoint *ep, __u8 dir, __u64 now)
{
	struct deny_key k = {
		.ifindex = ep->ifindex,
		.dir = dir,
	};
	__u64 *n = bpf_map_lookup_elem(&pt_denies, &k);
	if (n) {
		(*n)++;
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&pt_denies, &k, &one, BPF_NOEXIST);
	}
	struct ct_key fk;
	ct_key_of(&fk, p, ep->ifindex, 0);
	fk.pad[0] = dir;
	__u64 *last = bpf_map_lookup_elem(&pt_deny_seen, &fk);
	if (last && now - *last < 1000000000ULL)
		return TC_ACT_SHOT;
	bpf_map_update_elem(&pt_deny_seen, &fk, &now, BPF_ANY);
	report(p, ep, dir, VERDICT_DENY, now);
	return TC_ACT_SHOT;
}

static __always_inline int deferred(const __u8 *daddr)
{
	struct defer_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, daddr, 16);
	return bpf_map_lookup_elem(&pt_egress_defer, &k) != NULL;
}

/* addr_eq compares two 16-byte addresses (clang emits no inline memcmp for BPF). */
static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

/* from_node reports whether addr is an address of this node (a local route in the node
 * namespace): bpf_fib_lookup answers NOT_FWDED for local destinations. */
static __always_inline int from_node(struct __sk_buff *skb, const __u8 *addr)
{
	struct bpf_fib_lookup f;
	__u64 hi;
	__u32 mid;

	__builtin_memcpy(&hi, addr, 8);
	__builtin_memcpy(&mid, addr + 8, 4);
	__builtin_memset(&f, 0, sizeof(f));
	if (hi == 0 && mid == bpf_htonl(0x0000ffff)) { /* ::ffff:a.b.c.d */
		f.family = AF_INET_;
		__builtin_memcpy(&f.ipv4_dst, addr + 12, 4);
	} else {
		f.family = AF_INET6_;
		__builtin_memcpy(f.ipv6_dst, addr, 16);
	}
	f.ifindex = skb->ifindex;
	return bpf_fib_lookup(skb, &f, sizeof(f), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* from_pod runs at TC ingress of a pod's host-side veth: packets the pod sends.
 *
 * The egress policy of the pod needs the real destination. A packet to a Service IP
 * still carries the Service IP here (kube-proxy's DNAT runs later, in the node's
 * prerouting), so for destinations in pt_egress_defer (the Service CIDRs) the egress
 * check is deferred to where the translated destination is known: the destination's
 * veth (to_pod re-checks the source's egress when the source is a local pod) or the
 * node's uplink (to_net). Every other destination is checked here, as early as
 * possible. */
SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&pt_endpoints, &ifindex);
	struct pkt p;
	__u64 now;
	int r;

	if (!ep)
		return TC_ACT_UNSPEC;
	if (ep->priority)
		skb->priority = ep->priority;
	r = parse(skb, &p, ETH_HLEN);
	if (r <= 0)
		return r == 0 ? TC_ACT_UNSPEC : TC_ACT_SHOT;
	now = clock_ns();
	if (ct_known(&p, ifindex, DIR_EGRESS, now))
		return TC_ACT_UNSPEC;
	if ((ep->flags & EP_F_EGRESS_ISOLATED) && !deferred(p.daddr) &&
	    !rules_allow(ep->set_id, DIR_EGRESS, p.daddr, &p))
		return deny(&p, ep, DIR_EGRESS, now);
	/* Tracked even when egress is not isolated: replies must pass ingress isolation. */
	ct_create(&p, ifindex, DIR_EGRESS, now);
	if (ep->flags & EP_F_AUDIT_ALLOW)
		report(&p, ep, DIR_EGRESS, VERDICT_ALLOW, now);
	return TC_ACT_UNSPEC;
}

/* to_pod runs at TC egress of a pod's host-side veth: packets to the pod, already
 * DNATed. It checks the pod's ingress policy and, when the sender is a local pod, the
 * sender's egress policy against this (real) destination. */
SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&pt_endpoints, &ifindex);
	struct endpoint *src;
	struct pkt p;
	__u64 now;
	int r;

	if (!ep)
		return TC_ACT_UNSPEC;
	r = parse(skb, &p, ETH_HLEN);
	if (r <= 0)
		return r == 0 ? TC_ACT_UNSPEC : TC_ACT_SHOT;
	now = clock_ns();
	if (ct_known(&p, ifindex, DIR_INGRESS, now))
		return TC_ACT_UNSPEC;
	/* A pod may always reach itself, and its node may always reach it (NetworkPolicy:
	 * an isolated pod still accepts connections from its node). A pod reaching itself
	 * through its own Service arrives here DNATed back to it and, since kube-proxy
	 * masquerades hairpin traffic, with a node address as source (or, without that
	 * masquerade, its own): neither its ingress nor its egress rules apply. */
	/* The FIB lookup only where it can change the verdict: a node address is no pod
	 * endpoint, so for a pod that is not ingress-isolated the path below allows it too. */
	if (addr_eq(p.saddr, p.daddr) ||
	    ((ep->flags & EP_F_INGRESS_ISOLATED) && from_node(skb, p.saddr))) {
		ct_create(&p, ifindex, DIR_INGRESS, now);
		if (ep->flags & EP_F_AUDIT_ALLOW)
			report(&p, ep, DIR_INGRESS, VERDICT_ALLOW, now);
		return TC_ACT_UNSPEC;
	}
	if ((ep->flags & EP_F_INGRESS_ISOLATED) && !rules_allow(ep->set_id, DIR_INGRESS, p.saddr, &p))
		return deny(&p, ep, DIR_INGRESS, now);
	src = bpf_map_lookup_elem(&pt_endpoint_ips, p.saddr);
	if (src && (src->flags & EP_F_EGRESS_ISOLATED) &&
	    !rules_allow(src->set_id, DIR_EGRESS, p.daddr, &p))
		return deny(&p, src, DIR_EGRESS, now);
	ct_create(&p, ifindex, DIR_INGRESS, now);
	if (ep->flags & EP_F_AUDIT_ALLOW)
		report(&p, ep, DIR_INGRESS, VERDICT_ALLOW, now);
	return TC_ACT_UNSPEC;
}

/* to_net runs at TC egress of the node's uplinks and tunnels: packets leaving the node,
 * after DNAT. It completes the egress check of local pods whose destination was a
 * Service IP, and sets the pod's priority again (IP forwarding resets skb->priority
 * from the TOS byte). to_net_check serves devices with an Ethernet header (to_net) and
 * without a link-layer header (to_net_l3: WireGuard, IP tunnels, tun), whose packets
 * start with the IP header at TC egress. */
static __always_inline int to_net_check(struct __sk_buff *skb, __u32 l2len)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint *src;
	struct pkt p;
	__u64 now;
	int r;

	r = parse(skb, &p, l2len);
	if (r <= 0)
		return TC_ACT_UNSPEC;
	src = bpf_map_lookup_elem(&pt_endpoint_ips, p.saddr);
	if (!src)
		return TC_ACT_UNSPEC;
	if (addr_eq(p.saddr, p.daddr))
		return TC_ACT_UNSPEC; /* a pod reaching itself (see to_pod) */
	if (src->priority)
		skb->priority = src->priority;
	now = clock_ns();
	/* A flow the pod's veth already knows with these addresses (not translated on the
	 * way): a reply of a connection its ingress allowed, or a connection its egress
	 * allowed in from_pod. Only Service traffic, DNATed since, is checked again here.
	 * Looked up first: it is most of the traffic, and it never gets an entry of this
	 * device, so checking this device's entries first would miss on each of its packets. */
	if (ct_known(&p, src->ifindex, DIR_EGRESS, now))
		return TC_ACT_UNSPEC;
	if (ct_known(&p, ifindex, DIR_EGRESS, now))
		return TC_ACT_UNSPEC;
	if ((src->flags & EP_F_EGRESS_ISOLATED) && !rules_allow(src->set_id, DIR_EGRESS, p.daddr, &p))
		return deny(&p, src, DIR_EGRESS, now);
	ct_create(&p, ifindex, DIR_EGRESS, now);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int to_net(struct __sk_buff *skb)
{
	return to_net_check(skb, ETH_HLEN);
}

SEC("tc")
int to_net_l3(struct __sk_buff *skb)
{
	return to_net_check(skb, 0);
}
