// Command policyload installs a synthetic NetworkPolicy of N rules for the datapath
// benchmark (scripts/bench/policy.sh): the destination pod is ingress-isolated, rules
// 1..N-1 admit other /32 peers on TCP+UDP port 5201, rule N admits the source pod. The
// source pod is egress-isolated the same way. State stays in the kernel after exit
// (pinned BPF objects, the nftables table).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/nft"
	"github.com/patronus/patronus/policy"
)

func main() {
	mode := flag.String("mode", "ebpf", "ebpf | nft-linear | nft-sets | nft-linear-every-packet")
	netns := flag.String("netns", "", "node netns path")
	pin := flag.String("pin", "", "bpffs pin dir (ebpf)")
	src := flag.String("src", "", "source pod ip,veth")
	dst := flag.String("dst", "", "destination pod ip,veth")
	n := flag.Int("rules", 1000, "rules per direction")
	flag.Parse()

	parse := func(s string) (netip.Addr, string) {
		var ip, veth string
		for i := range s {
			if s[i] == ',' {
				ip, veth = s[:i], s[i+1:]
			}
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			log.Fatalf("bad endpoint %q: %v", s, err)
		}
		return a, veth
	}
	sIP, sVeth := parse(*src)
	dIP, dVeth := parse(*dst)
	ports := []policy.PortRange{{Protocol: policy.TCP, First: 5201, Last: 5201}, {Protocol: policy.UDP, First: 5201, Last: 5201}}
	rules := func(last netip.Addr) []policy.Rule {
		var rs []policy.Rule
		for i := 0; i < *n-1; i++ {
			peer := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
			rs = append(rs, policy.Rule{Policy: "bench/p", Index: i, Peers: []policy.Peer{{Prefix: netip.PrefixFrom(peer, 32)}}, Ports: ports})
		}
		return append(rs, policy.Rule{Policy: "bench/p", Index: *n - 1, Peers: []policy.Peer{{Prefix: netip.PrefixFrom(last, 32)}}, Ports: ports})
	}
	eps := []enforce.Endpoint{
		{EndpointPolicy: policy.EndpointPolicy{Namespace: "bench", Pod: "a", IPs: []netip.Addr{sIP}, EgressIsolated: true, Egress: rules(dIP)}, HostVeth: sVeth},
		{EndpointPolicy: policy.EndpointPolicy{Namespace: "bench", Pod: "b", IPs: []netip.Addr{dIP}, IngressIsolated: true, Ingress: rules(sIP)}, HostVeth: dVeth},
	}
	var e enforce.Enforcer
	var err error
	switch *mode {
	case "ebpf":
		e, err = enforce.NewEBPF(enforce.Options{PinDir: *pin, NetNS: *netns})
	case "nft-linear", "nft-sets", "nft-linear-every-packet":
		e, err = nft.New(nft.Options{NetNS: *netns, Linear: *mode != "nft-sets", EveryPacket: *mode == "nft-linear-every-packet"})
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	if err := e.Set(context.Background(), eps); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "policyload: %s: %d rules per direction installed\n", *mode, *n)
}
