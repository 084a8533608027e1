package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/qos"
)

const conflistProd = `{"cniVersion":"1.0.0","name":"patronus-k8s","plugins":[
 {"type":"patronus-cni","bridge":"br-test","ipam":{"type":"host-local","subnet":"10.244.0.0/16"},
  "sdwan":{"database":"/tmp/x.db","cluster_id":"prod-us-west","default_qos_class":"bulk"}},
 {"type":"portmap"}]}`

func TestLoadClusterIDPrecedence(t *testing.T) {
	tests := []struct {
		name       string
		in         Input
		wantID     string
		wantSource string
		wantErr    []string // substrings the error must contain
	}{
		{name: "env only", in: Input{ClusterIDEnv: "c1"}, wantID: "c1", wantSource: "environment CLUSTER_ID"},
		{name: "configmap only", in: Input{ConfigMap: map[string]string{"cluster-id": "c2"}}, wantID: "c2", wantSource: "ConfigMap kube-system/patronus-config key cluster-id"},
		{name: "conflist only", in: Input{Conflist: []byte(conflistProd), ConflistPath: "/etc/cni/net.d/10-patronus.conflist"}, wantID: "prod-us-west", wantSource: "conflist /etc/cni/net.d/10-patronus.conflist key sdwan.cluster_id"},
		{name: "all three agree: env wins as source", in: Input{ClusterIDEnv: "prod-us-west", ConfigMap: map[string]string{"cluster-id": "prod-us-west"}, Conflist: []byte(conflistProd)}, wantID: "prod-us-west", wantSource: "environment CLUSTER_ID"},
		{name: "env vs configmap", in: Input{ClusterIDEnv: "a", ConfigMap: map[string]string{"cluster-id": "b"}},
			wantErr: []string{"environment CLUSTER_ID", `"a"`, "ConfigMap kube-system/patronus-config key cluster-id", `"b"`}},
		{name: "configmap vs conflist", in: Input{ConfigMap: map[string]string{"cluster-id": "b"}, Conflist: []byte(conflistProd), ConflistPath: "/c"},
			wantErr: []string{"key cluster-id", `"b"`, "conflist /c key sdwan.cluster_id", `"prod-us-west"`}},
		{name: "env agrees with configmap, conflist disagrees", in: Input{ClusterIDEnv: "b", ConfigMap: map[string]string{"cluster-id": "b"}, Conflist: []byte(conflistProd), ConflistPath: "/c"},
			wantErr: []string{"environment CLUSTER_ID", "sdwan.cluster_id"}},
		{name: "none", in: Input{}, wantErr: []string{"CLUSTER_ID", "cluster-id", "sdwan.cluster_id", "not set"}},
		{name: "invalid id", in: Input{ClusterIDEnv: "Prod_1"}, wantErr: []string{"environment CLUSTER_ID", "Prod_1"}},
		{name: "too long id", in: Input{ClusterIDEnv: strings.Repeat("a", 64)}, wantErr: []string{"CLUSTER_ID", "63"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.NodeName = "node-1"
			cfg, err := Load(tc.in)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("want error, got config %+v", cfg)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ClusterID != tc.wantID || cfg.ClusterIDSource != tc.wantSource {
				t.Errorf("got id %q from %q, want %q from %q", cfg.ClusterID, cfg.ClusterIDSource, tc.wantID, tc.wantSource)
			}
		})
	}
}

func TestLoadNodeNameRequired(t *testing.T) {
	_, err := Load(Input{ClusterIDEnv: "c1"})
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != EnvNodeName {
		t.Fatalf("want error naming NODE_NAME, got %v", err)
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(Input{ClusterIDEnv: "c1", NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeBlockSize != 24 || cfg.Datapath != DatapathBoth || cfg.MulticastGroup.String() != "239.255.77.77:7947" ||
		cfg.KeyRotation != 24*time.Hour || cfg.ProbeInterval != 50*time.Millisecond || cfg.Bridge != "cni-bridge0" ||
		cfg.DefaultQoSClass != qos.BestEffort || cfg.ClusterCIDR.IsValid() || len(cfg.RemoteClusters) != 0 {
		t.Fatalf("defaults wrong: %+v", cfg)
	}
}

func TestLoadConflist(t *testing.T) {
	cfg, err := Load(Input{NodeName: "n", Conflist: []byte(conflistProd)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bridge != "br-test" || cfg.DefaultQoSClass != qos.Bulk || cfg.Database != "/tmp/x.db" {
		t.Fatalf("conflist values not read: %+v", cfg)
	}
	single := `{"cniVersion":"1.0.0","name":"x","type":"patronus-cni","sdwan":{"cluster_id":"one"}}`
	cfg, err = Load(Input{NodeName: "n", Conflist: []byte(single)})
	if err != nil || cfg.ClusterID != "one" || cfg.Bridge != "cni-bridge0" {
		t.Fatalf("single-plugin conf: %+v, %v", cfg, err)
	}
	for name, tc := range map[string]struct{ conf, key string }{
		"not json":      {`{`, "(file)"},
		"no patronus":   {`{"plugins":[{"type":"bridge"}]}`, "plugins"},
		"bad qos class": {`{"plugins":[{"type":"patronus-cni","sdwan":{"cluster_id":"c","default_qos_class":"gold"}}]}`, "sdwan.default_qos_class"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(Input{NodeName: "n", ClusterIDEnv: "c", Conflist: []byte(tc.conf), ConflistPath: "/etc/x.conflist"})
			var ce *Error
			if !errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(err.Error(), "/etc/x.conflist") {
				t.Fatalf("want error naming key %q and the file, got %v", tc.key, err)
			}
		})
	}
}

const remoteSeed = `
- id: "gcp-us-central1"
  endpoint: "35.232.1.2:51820"
  cidr: "10.248.0.0/16"
- id: "onprem-dc1"
  endpoint: "203.0.113.10:51820"
  cidr: "10.250.0.0/16"
  gossip: "203.0.113.11:7000"
  publicKey: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
  paths: ["198.51.100.7:51820", "gw.example.com:51821"]
`

func TestLoadConfigMapValid(t *testing.T) {
	cm := map[string]string{
		"cluster-id": "aws-us-west-2", "cluster-cidr": "10.244.0.0/16", "service-cidr": "10.96.0.0/12",
		"remote-clusters": remoteSeed, "node-block-size": "26", "datapath": "ebpf",
		"multicast-group": "239.1.2.3:9000", "key-rotation": "1h", "probe-interval": "200ms",
		"clusterid": "typo",
	}
	cfg, err := Load(Input{NodeName: "n", ConfigMap: cm})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClusterCIDR != netip.MustParsePrefix("10.244.0.0/16") || cfg.ServiceCIDR != netip.MustParsePrefix("10.96.0.0/12") ||
		cfg.NodeBlockSize != 26 || cfg.Datapath != DatapathEBPF || cfg.MulticastGroup.String() != "239.1.2.3:9000" ||
		cfg.KeyRotation != time.Hour || cfg.ProbeInterval != 200*time.Millisecond {
		t.Fatalf("values not applied: %+v", cfg)
	}
	if len(cfg.RemoteClusters) != 2 {
		t.Fatalf("remote clusters: %+v", cfg.RemoteClusters)
	}
	r0, r1 := cfg.RemoteClusters[0], cfg.RemoteClusters[1]
	if r0.ID != "gcp-us-central1" || r0.Gossip != "35.232.1.2:7946" || r0.PublicKey != nil || r0.CIDR.String() != "10.248.0.0/16" {
		t.Errorf("first remote: %+v", r0)
	}
	if r1.Gossip != "203.0.113.11:7000" || len(r1.PublicKey) != 32 || len(r1.Paths) != 2 {
		t.Errorf("second remote: %+v", r1)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], `"clusterid"`) {
		t.Errorf("want a warning about the unknown key, got %v", cfg.Warnings)
	}
}

func TestLoadConfigMapInvalidNamesKey(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{"cluster-id": "local", "cluster-cidr": "10.244.0.0/16"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		cm      map[string]string
		wantKey string
	}{
		{"cluster-cidr garbage", base("cluster-cidr", "ten"), "cluster-cidr"},
		{"cluster-cidr host bits", base("cluster-cidr", "10.244.0.1/16"), "cluster-cidr"},
		{"service-cidr garbage", base("service-cidr", "10.96.0.0"), "service-cidr"},
		{"service overlaps cluster", base("service-cidr", "10.244.128.0/20"), "service-cidr"},
		{"node-block-size not int", base("node-block-size", "x"), "node-block-size"},
		{"node-block-size shorter than cidr", base("node-block-size", "8"), "node-block-size"},
		{"node-block-size too long", base("node-block-size", "31"), "node-block-size"},
		{"datapath", base("datapath", "iptables"), "datapath"},
		{"multicast not multicast", base("multicast-group", "10.0.0.1:7947"), "multicast-group"},
		{"multicast no port", base("multicast-group", "239.1.1.1"), "multicast-group"},
		{"key-rotation", base("key-rotation", "daily"), "key-rotation"},
		{"key-rotation too short", base("key-rotation", "1s"), "key-rotation"},
		{"probe-interval", base("probe-interval", "-5ms"), "probe-interval"},
		{"remote not a list", base("remote-clusters", "id: x"), "remote-clusters"},
		{"remote unknown field", base("remote-clusters", "- {id: r, endpiont: '1.2.3.4:1', cidr: 10.1.0.0/16}"), "remote-clusters"},
		{"remote missing id", base("remote-clusters", "- {endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16}"), "remote-clusters[0].id"},
		{"remote bad id", base("remote-clusters", "- {id: R_1, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16}"), "remote-clusters[0].id"},
		{"remote own id", base("remote-clusters", "- {id: local, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16}"), "remote-clusters[0].id"},
		{"remote duplicate id", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16}\n- {id: r, endpoint: '1.2.3.4:1', cidr: 10.2.0.0/16}"), "remote-clusters[1].id"},
		{"remote missing endpoint", base("remote-clusters", "- {id: r, cidr: 10.1.0.0/16}"), "remote-clusters[0].endpoint"},
		{"remote endpoint no port", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4', cidr: 10.1.0.0/16}"), "remote-clusters[0].endpoint"},
		{"remote endpoint bad port", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:70000', cidr: 10.1.0.0/16}"), "remote-clusters[0].endpoint"},
		{"remote missing cidr", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1'}"), "remote-clusters[0].cidr"},
		{"remote cidr overlaps local", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1', cidr: 10.244.5.0/24}"), "remote-clusters[0].cidr"},
		{"remote cidrs overlap", base("remote-clusters", "- {id: a, endpoint: 'a.example:1', cidr: 10.1.0.0/16}\n- {id: b, endpoint: 'b.example:1', cidr: 10.0.0.0/8}"), "remote-clusters[1].cidr"},
		{"remote bad gossip", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16, gossip: 'x y:1'}"), "remote-clusters[0].gossip"},
		{"remote bad key", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16, publicKey: 'abcd'}"), "remote-clusters[0].publicKey"},
		{"remote bad path", base("remote-clusters", "- {id: r, endpoint: '1.2.3.4:1', cidr: 10.1.0.0/16, paths: ['1.2.3.4']}"), "remote-clusters[0].paths[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(Input{NodeName: "n", ConfigMap: tc.cm})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *config.Error, got %v", err)
			}
			if ce.Key != tc.wantKey || ce.Source != ConfigMapSource {
				t.Errorf("error names %s key %q, want key %q: %v", ce.Source, ce.Key, tc.wantKey, err)
			}
			if !strings.Contains(err.Error(), tc.wantKey) || !strings.Contains(err.Error(), "patronus-config") {
				t.Errorf("message %q does not name the key and the ConfigMap", err)
			}
		})
	}
}

func TestConfigMapNamespaceInMessages(t *testing.T) {
	_, err := Load(Input{NodeName: "n", ConfigMapNamespace: "patronus", ConfigMap: map[string]string{"cluster-id": "c", "datapath": "x"}})
	var ce *Error
	if !errors.As(err, &ce) || ce.Source != "ConfigMap patronus/patronus-config" {
		t.Fatalf("want the ConfigMap's real namespace in the error, got %v", err)
	}
	_, err = Load(Input{NodeName: "n", ConfigMapNamespace: "patronus", ClusterIDEnv: "a", ConfigMap: map[string]string{"cluster-id": "b"}})
	if err == nil || !strings.Contains(err.Error(), "ConfigMap patronus/patronus-config key cluster-id") {
		t.Fatalf("disagreement must name the ConfigMap's namespace: %v", err)
	}
}
