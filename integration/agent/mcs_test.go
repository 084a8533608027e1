package agent_test

// One gateway agent (the built binary, in a network namespace of its own, with the
// shipped manifests and the patronus ServiceAccount) and the MCS CRDs: the agent wires
// the MCS controller to its mesh node and the ClusterSetIP datapath to its namespace's
// nftables. A Service with an EndpointSlice and a ServiceExport becomes a valid export,
// a ServiceImport with a ClusterSetIP from the default clusterset-ip-range, and a DNAT
// rule for that VIP in the agent's namespace.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

func TestGatewayAgentRunsMCS(t *testing.T) {
	l, c := newMeshLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.InstallMCSCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	k := c.Client()
	const ns, name = "default", "web"
	proto, ready := corev1.ProtocolTCP, true
	if _, err := k.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: proto, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	portName, port := "http", int32(8080)
	if _, err := k.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	a := l.addAgent(1)

	waitFor(t, 90*time.Second, "the ServiceExport is Valid", func() error {
		if err := a.alive(); err != nil {
			return err
		}
		se, err := mc.MulticlusterV1beta1().ServiceExports(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cond := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid))
		if cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Errorf("Valid condition %+v", cond)
		}
		return nil
	})

	var vip netip.Addr
	rng := netip.MustParsePrefix("10.112.0.0/16")
	waitFor(t, 60*time.Second, "a ServiceImport with a ClusterSetIP from 10.112.0.0/16", func() error {
		si, err := mc.MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("no ServiceImport yet")
		}
		if err != nil {
			return err
		}
		if si.Labels["app.kubernetes.io/managed-by"] != "patronus" || si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.IPs) != 1 {
			return fmt.Errorf("ServiceImport labels %v type %q ips %v", si.Labels, si.Spec.Type, si.Spec.IPs)
		}
		ip, err := netip.ParseAddr(si.Spec.IPs[0])
		if err != nil || !rng.Contains(ip) {
			return fmt.Errorf("ClusterSetIP %q not in %s", si.Spec.IPs[0], rng)
		}
		if len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
			return fmt.Errorf("ports %+v, want 80", si.Spec.Ports)
		}
		vip = ip
		return nil
	})

	// The agent's status says it leads and sees the export and the import.
	waitFor(t, 30*time.Second, "status shows MCS leader with 1 export and 1 import", func() error {
		out, err := l.cliStdout("status", "--socket", a.socket, "--database", a.db, "-o", "json")
		var st struct {
			Agent struct {
				Live struct {
					MCS struct {
						Available                      bool
						ServiceExports, ServiceImports int
						Controller                     string
						Leader                         bool
					}
				}
			}
		}
		if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
			return fmt.Errorf("status -o json: %v (%v): %s", jerr, err, out)
		}
		m := st.Agent.Live.MCS
		if !m.Available || !m.Leader || m.ServiceExports != 1 || m.ServiceImports != 1 ||
			!strings.Contains(m.Controller, "controller running") || !strings.Contains(m.Controller, "datapath running") {
			return fmt.Errorf("MCS status %+v", m)
		}
		return nil
	})

	out, _ := l.cli("status", "--socket", a.socket, "--database", a.db)
	if !strings.Contains(out, "MCS: 1 ServiceExports, 1 ServiceImports, this agent leads; controller running") {
		t.Errorf("patronus status lacks the MCS line:\n%s", out)
	}

	// The ClusterSetIP datapath DNATs the VIP to the local endpoint in the agent's namespace.
	if _, err := exec.LookPath("nft"); err != nil {
		t.Logf("nft not installed: the nftables rules of the VIP are not inspected (the datapath package's own tests do)")
		return
	}
	waitFor(t, 30*time.Second, "nftables DNAT for the ClusterSetIP in the agent's namespace", func() error {
		out, err := exec.Command("ip", "netns", "exec", a.ns, "nft", "list", "table", "inet", "patronus").CombinedOutput()
		s := string(out)
		if err != nil {
			return fmt.Errorf("nft list table: %v: %s", err, s)
		}
		if !strings.Contains(s, "mcs-prerouting") || !strings.Contains(s, vip.String()) || !strings.Contains(s, "10.244.1.5") {
			return fmt.Errorf("table inet patronus lacks the VIP %s or its endpoint:\n%s", vip, s)
		}
		return nil
	})
}

// On a node that is not a gateway (another Node is marked) the agent runs the ClusterSetIP
// datapath at once and no controller, and says why.
func TestNonGatewayAgentRunsMCSDatapathOnly(t *testing.T) {
	l, c := newMeshLab(t)
	ctx := context.Background()
	for name, labels := range map[string]map[string]string{"gw-1": {"patronus.io/gateway": "true"}, "gw-2": nil} {
		if _, err := c.Client().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a2 := l.addAgent(2)
	start := time.Now()
	waitFor(t, 30*time.Second, "gw-2 reports the datapath running and the controller off", func() error {
		if err := a2.alive(); err != nil {
			return err
		}
		out, _ := l.cli("status", "--socket", a2.socket, "--database", a2.db)
		if !strings.Contains(out, "MCS: 0 ServiceExports, 0 ServiceImports; controller off: the mesh does not run on this agent") ||
			!strings.Contains(out, "datapath running") {
			return fmt.Errorf("status:\n%s", out)
		}
		return nil
	})
	t.Logf("MCS datapath up on the non-gateway agent %v after it started", time.Since(start).Round(time.Second))
}
