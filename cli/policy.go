package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/policy"
)

// newPolicyCmd is `patronus policy`: offline NetworkPolicy analysis of manifests, with
// the same compiler and evaluator the agent's datapaths are loaded from.
func newPolicyCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Analyse Kubernetes NetworkPolicies: reachability matrix and flow traces",
	}
	cmd.AddCommand(newPolicyMatrixCmd(e), newPolicyTraceCmd(e))
	return cmd
}

// probeResult is one line of `policy matrix -o json`.
type probeResult struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Allowed  bool   `json:"allowed"`
}

func newPolicyMatrixCmd(e env) *cobra.Command {
	var dir, kubeconfig, ports, protocols, output string
	cmd := &cobra.Command{
		Use:   "matrix [--from DIR | --kubeconfig FILE]",
		Short: "Print the verdict for every pair of pods, port and protocol",
		Long: "Reads every *.yaml, *.yml and *.json file in DIR (multi-document YAML and List kinds\n" +
			"accepted), takes its Namespaces, Pods and NetworkPolicies, and prints whether each pod\n" +
			"may connect to each other pod on each port and protocol. In the table, rows are\n" +
			"sources, columns destinations: '.' allowed, 'X' denied, '-' the pod itself.\n" +
			"Without --from, the live cluster is read (--kubeconfig, $KUBECONFIG, or in-cluster).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFormat(output); err != nil {
				return err
			}
			portList, err := parsePorts(ports)
			if err != nil {
				return err
			}
			protoList, err := parseProtocols(protocols)
			if err != nil {
				return err
			}
			set, err := loadPolicySet(cmd.Context(), e, dir, kubeconfig)
			if err != nil {
				return err
			}
			var pods []*policy.EndpointPolicy
			for i := range set.Endpoints {
				ep := &set.Endpoints[i]
				if len(ep.IPs) == 0 {
					fmt.Fprintf(e.stderr, "note: pod %s has no IP (status.podIP): left out of the matrix\n", ep.Name())
					continue
				}
				pods = append(pods, ep)
			}
			var results []probeResult
			for _, src := range pods {
				for _, dst := range pods {
					if src == dst {
						continue
					}
					for _, port := range portList {
						for _, proto := range protoList {
							v, err := set.Decide(policy.Flow{SrcPod: src.Name(), DstPod: dst.Name(), Protocol: proto, Port: port})
							if err != nil {
								return err
							}
							results = append(results, probeResult{From: src.Name(), To: dst.Name(), Port: port, Protocol: proto.String(), Allowed: v.Allowed})
						}
					}
				}
			}
			if results == nil {
				results = []probeResult{} // JSON: [] rather than null
			}
			return printList(e.stdout, output, results, func(tw *tabwriter.Writer) {
				printMatrixTables(tw, pods, portList, protoList, results)
			})
		},
	}
	cmd.Flags().StringVar(&dir, "from", "", "directory of manifests (Namespaces, Pods, NetworkPolicies); default: the live cluster")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the live cluster (default $KUBECONFIG, else in-cluster)")
	cmd.Flags().StringVar(&ports, "ports", "80,81", "comma-separated destination ports")
	cmd.Flags().StringVar(&protocols, "protocols", "TCP", "comma-separated protocols: TCP, UDP, SCTP")
	outputFlag(cmd, &output)
	return cmd
}

// printMatrixTables writes one grid per protocol and port, like the upstream e2e suite's
// reachability tables, followed by a count of allowed and denied pairs.
func printMatrixTables(tw *tabwriter.Writer, pods []*policy.EndpointPolicy, ports []uint16, protos []policy.Protocol, results []probeResult) {
	allowed := make(map[probeResult]bool, len(results))
	for _, r := range results {
		key := r
		key.Allowed = false
		allowed[key] = r.Allowed
	}
	first := true
	for _, proto := range protos {
		for _, port := range ports {
			if !first {
				fmt.Fprintln(tw)
			}
			first = false
			fmt.Fprintf(tw, "%s/%d", proto, port)
			for _, dst := range pods {
				fmt.Fprintf(tw, "\t%s", dst.Name())
			}
			fmt.Fprintln(tw)
			nAllowed, nDenied := 0, 0
			for _, src := range pods {
				fmt.Fprint(tw, src.Name())
				for _, dst := range pods {
					mark := "-"
					if src != dst {
						if allowed[probeResult{From: src.Name(), To: dst.Name(), Port: port, Protocol: proto.String()}] {
							mark = "."
							nAllowed++
						} else {
							mark = "X"
							nDenied++
						}
					}
					fmt.Fprintf(tw, "\t%s", mark)
				}
				fmt.Fprintln(tw)
			}
			fmt.Fprintf(tw, "(%d allowed, %d denied)\n", nAllowed, nDenied)
		}
	}
}

func newPolicyTraceCmd(e env) *cobra.Command {
	var from, to, dir, kubeconfig, protocol, output string
	var port int
	cmd := &cobra.Command{
		Use:   "trace --from ns/pod --to ns/pod --port N [--from-dir DIR | --kubeconfig FILE]",
		Short: "Explain the verdict for one flow: which policies isolate each side, which rules allow it",
		Long: "Decides one flow the way the datapath does, on the manifests in --from-dir, and prints\n" +
			"the verdict with the policies that isolate the source's egress and the destination's\n" +
			"ingress and the rules that allowed it. --from and --to take a pod (namespace/name) or\n" +
			"an IP address (for addresses outside the cluster). Without --from-dir, the live cluster\n" +
			"is read (--kubeconfig, $KUBECONFIG, or in-cluster).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFormat(output); err != nil {
				return err
			}
			if port < 1 || port > 65535 {
				return usagef("--port %d: must be in 1-65535", port)
			}
			proto, err := policy.ParseProtocol(protocol)
			if err != nil {
				return usagef("--protocol: %v", err)
			}
			flow := policy.Flow{Protocol: proto, Port: uint16(port)}
			if flow.SrcPod, flow.SrcIP, err = parseFlowEnd("--from", from); err != nil {
				return err
			}
			if flow.DstPod, flow.DstIP, err = parseFlowEnd("--to", to); err != nil {
				return err
			}
			set, err := loadPolicySet(cmd.Context(), e, dir, kubeconfig)
			if err != nil {
				return err
			}
			v, err := set.Decide(flow)
			if err != nil {
				return err
			}
			switch output {
			case "table", "":
				return printTrace(e.stdout, v)
			default:
				return printList(e.stdout, output, v, nil)
			}
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "source: namespace/pod or an IP address")
	cmd.Flags().StringVar(&to, "to", "", "destination: namespace/pod or an IP address")
	cmd.Flags().IntVar(&port, "port", 0, "destination port")
	cmd.Flags().StringVar(&protocol, "protocol", "TCP", "protocol: TCP, UDP or SCTP")
	cmd.Flags().StringVar(&dir, "from-dir", "", "directory of manifests (Namespaces, Pods, NetworkPolicies); default: the live cluster")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the live cluster (default $KUBECONFIG, else in-cluster)")
	outputFlag(cmd, &output)
	return cmd
}

func printTrace(w io.Writer, v policy.Verdict) error {
	verdict := "DENIED"
	if v.Allowed {
		verdict = "ALLOWED"
	}
	_, err := fmt.Fprintf(w, "%s %s (%s) → %s (%s) %s/%d\n%s\n",
		verdict, v.From, v.SrcIP, v.To, v.DstIP, v.Protocol, v.Port, v)
	return err
}

// checkOutputFormat rejects a bad -o before any work (reading a live cluster can take a while).
func checkOutputFormat(f string) error {
	switch f {
	case "table", "json", "yaml", "":
		return nil
	}
	return usagef("unknown output format %q: use table, json or yaml", f)
}

// parseFlowEnd accepts "namespace/pod" or an IP address.
func parseFlowEnd(flag, s string) (string, netip.Addr, error) {
	if s == "" {
		return "", netip.Addr{}, usagef("%s is required", flag)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return "", a, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", netip.Addr{}, usagef("%s %q: want namespace/pod or an IP address", flag, s)
	}
	return s, netip.Addr{}, nil
}

func parsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 65535 {
			return nil, usagef("--ports: %q is not a port (1-65535)", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

func parseProtocols(s string) ([]policy.Protocol, error) {
	var out []policy.Protocol
	for _, f := range strings.Split(s, ",") {
		p, err := policy.ParseProtocol(f)
		if err != nil {
			return nil, usagef("--protocols: %v", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// loadPolicySet reads the manifests of dir, or the live cluster when dir is empty, and
// compiles them. Objects of other kinds are mentioned on stderr so that a user who
// expected them to count is not misled.
func loadPolicySet(ctx context.Context, e env, dir, kubeconfig string) (*policy.Set, error) {
	var in policy.Input
	source := dir
	if dir != "" {
		l, err := policy.LoadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, s := range l.Skipped {
			fmt.Fprintln(e.stderr, "note:", s)
		}
		in = l.Input
	} else {
		if kubeconfig == "" {
			kubeconfig = e.getenv("KUBECONFIG")
		}
		cfg, err := kube.RESTConfig(kubeconfig)
		if err != nil {
			return nil, err
		}
		cfg.UserAgent = "patronus-policy"
		client, err := kclient.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		if in, err = listCluster(ctx, client); err != nil {
			return nil, err
		}
		source = "the cluster at " + cfg.Host
	}
	set, err := policy.Compile(in, policy.Options{})
	if err != nil {
		// The loader validated every object; anything left is still the input's fault.
		return nil, fmt.Errorf("compile policies from %s: %w", source, err)
	}
	return set, nil
}

// listCluster reads every Namespace, Pod and NetworkPolicy, in pages so that a large
// cluster does not need one huge response.
func listCluster(ctx context.Context, c kclient.Kube) (policy.Input, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	var in policy.Input
	opts := metav1.ListOptions{Limit: 500}
	for opts.Continue = ""; ; {
		l, err := c.Namespaces().List(ctx, opts)
		if err != nil {
			return in, fmt.Errorf("list namespaces: %w", err)
		}
		in.Namespaces = append(in.Namespaces, l.Items...)
		if opts.Continue = l.Continue; opts.Continue == "" {
			break
		}
	}
	for opts.Continue = ""; ; {
		l, err := c.Pods("").List(ctx, opts)
		if err != nil {
			return in, fmt.Errorf("list pods: %w", err)
		}
		in.Pods = append(in.Pods, l.Items...)
		if opts.Continue = l.Continue; opts.Continue == "" {
			break
		}
	}
	for opts.Continue = ""; ; {
		l, err := c.NetworkPolicies("").List(ctx, opts)
		if err != nil {
			return in, fmt.Errorf("list networkpolicies: %w", err)
		}
		in.Policies = append(in.Policies, l.Items...)
		if opts.Continue = l.Continue; opts.Continue == "" {
			break
		}
	}
	return in, nil
}
