package cni

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// seedConf is the seed's "ADD (Pod Creation)" configuration without its // comment.
const seedConf = `{
  "cniVersion": "1.0.0",
  "name": "patronus-k8s",
  "type": "patronus-cni",
  "bridge": "cni-bridge0",
  "ipam": {
    "type": "host-local",
    "subnet": "10.244.0.0/16",
    "rangeStart": "10.244.1.10",
    "rangeEnd": "10.244.254.254",
    "gateway": "10.244.0.1",
    "routes": [
      { "dst": "0.0.0.0/0" },
      { "dst": "10.96.0.0/12" }
    ]
  },
  "sdwan": {
    "database": "/var/lib/patronus/k8s-sdwan.db",
    "cluster_id": "cluster-1",
    "enable_policy_enforcement": true,
    "default_qos_class": "best-effort"
  }
}`

// patch returns seedConf with the top-level (or dotted one-level nested) keys set;
// a nil value deletes the key.
func patch(t testing.TB, kv map[string]any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(seedConf), &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		target := m
		if outer, inner, ok := strings.Cut(k, "."); ok {
			target = m[outer].(map[string]any)
			k = inner
		}
		if v == nil {
			delete(target, k)
		} else {
			target[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfigSeed(t *testing.T) {
	for _, v := range SupportedVersions {
		c, err := ParseConfig(patch(t, map[string]any{"cniVersion": v}))
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if c.Bridge != "cni-bridge0" || c.SDWAN.ClusterID != "cluster-1" || !c.SDWAN.EnablePolicyEnforcement ||
			c.SDWAN.DefaultQoSClass != "best-effort" || c.IPAM.Type != "host-local" || c.hostLocal == nil {
			t.Fatalf("%s: decoded %+v", v, c)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig(patch(t, map[string]any{"bridge": nil, "sdwan": map[string]any{}}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != DefaultBridge || c.SDWAN.Database != DefaultDatabase || c.SDWAN.AgentSocket != DefaultAgentSocket ||
		c.SDWAN.DefaultQoSClass != DefaultQoSClass || c.MTU != 0 {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conf  []byte
		code  uint
		field string
	}{
		{"not JSON", []byte(`{"cniVersion":`), types.ErrDecodingFailure, ""},
		{"array", []byte(`[]`), types.ErrDecodingFailure, ""},
		{"mtu is a string", patch(t, map[string]any{"mtu": "1500"}), types.ErrDecodingFailure, "mtu"},
		{"sdwan is a string", patch(t, map[string]any{"sdwan": "x"}), types.ErrDecodingFailure, "sdwan"},
		{"policy flag is a string", patch(t, map[string]any{"sdwan.enable_policy_enforcement": "yes"}), types.ErrDecodingFailure, "sdwan.enable_policy_enforcement"},
		{"no cniVersion", patch(t, map[string]any{"cniVersion": nil}), types.ErrInvalidNetworkConfig, "cniVersion"},
		{"old cniVersion", patch(t, map[string]any{"cniVersion": "0.2.0"}), types.ErrInvalidNetworkConfig, "cniVersion"},
		{"no name", patch(t, map[string]any{"name": nil}), types.ErrInvalidNetworkConfig, "name"},
		{"long bridge", patch(t, map[string]any{"bridge": "a-very-long-bridge-name"}), types.ErrInvalidNetworkConfig, "bridge"},
		{"bridge with slash", patch(t, map[string]any{"bridge": "br/0"}), types.ErrInvalidNetworkConfig, "bridge"},
		{"mtu too small", patch(t, map[string]any{"mtu": 10}), types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu too big", patch(t, map[string]any{"mtu": 70000}), types.ErrInvalidNetworkConfig, "mtu"},
		{"no ipam", patch(t, map[string]any{"ipam": nil}), types.ErrInvalidNetworkConfig, "ipam.type"},
		{"ipam type is a path", patch(t, map[string]any{"ipam.type": "../../bin/sh"}), types.ErrInvalidNetworkConfig, "ipam.type"},
		{"bad subnet", patch(t, map[string]any{"ipam.subnet": "10.244.0.0/33"}), types.ErrInvalidNetworkConfig, "ipam"},
		{"no range", patch(t, map[string]any{"ipam.subnet": nil}), types.ErrInvalidNetworkConfig, "ipam"},
		{"gateway outside subnet", patch(t, map[string]any{"ipam.gateway": "10.1.0.1"}), types.ErrInvalidNetworkConfig, "ipam"},
		{"relative database", patch(t, map[string]any{"sdwan.database": "k8s.db"}), types.ErrInvalidNetworkConfig, "sdwan.database"},
		{"relative agent socket", patch(t, map[string]any{"sdwan.agent_socket": "agent.sock"}), types.ErrInvalidNetworkConfig, "sdwan.agent_socket"},
		{"unknown qos", patch(t, map[string]any{"sdwan.default_qos_class": "gold"}), types.ErrInvalidNetworkConfig, "sdwan.default_qos_class"},
		{"bad cluster id", patch(t, map[string]any{"sdwan.cluster_id": "Prod_1"}), types.ErrInvalidNetworkConfig, "sdwan.cluster_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.conf)
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("want a CNI error, got %v", err)
			}
			if te.Code != tc.code {
				t.Fatalf("want code %d, got %d: %s", tc.code, te.Code, te.Msg)
			}
			if tc.field != "" && !strings.Contains(te.Msg, `"`+tc.field) {
				t.Fatalf("message does not name field %q: %s", tc.field, te.Msg)
			}
		})
	}
}

func TestParseConfListManifest(t *testing.T) {
	b, err := os.ReadFile("../manifests/10-patronus.conflist")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ParseConfList(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "patronus-k8s" || l.CNIVersion != "1.0.0" {
		t.Fatalf("manifest conflist: %+v", l)
	}
}

func TestParseConfListErrors(t *testing.T) {
	for _, tc := range []struct{ name, conf, field string }{
		{"bad version in list", `{"cniVersion":"1.0.0","cniVersions":["1.0.0","9.9.9"],"name":"n","plugins":[{"type":"patronus-cni","ipam":{"type":"dhcp"}}]}`, "cniVersions"},
		{"no version", `{"name":"n","plugins":[{"type":"patronus-cni","ipam":{"type":"dhcp"}}]}`, "cniVersion"},
		{"no plugins", `{"cniVersion":"1.0.0","name":"n","plugins":[]}`, "plugins"},
		{"no patronus entry", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}`, "plugins"},
		{"bad entry", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"patronus-cni","ipam":{"type":"dhcp"},"sdwan":{"default_qos_class":"x"}}]}`, "sdwan.default_qos_class"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfList([]byte(tc.conf))
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `"`+tc.field) {
				t.Fatalf("want code 7 naming %q, got %v", tc.field, err)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	a, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
	if err != nil || a != (podArgs{Namespace: "default", Name: "web-0", UID: "u-1"}) {
		t.Fatalf("got %+v, %v", a, err)
	}
	var te *types.Error
	if _, err := parseArgs("K8S_POD_NAME"); !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("want code 4, got %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(seedConf))
	f.Add(patch(f, map[string]any{"ipam.type": "dhcp", "mtu": 9000}))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"x","ipam":{"type":"host-local","ranges":[[{"subnet":"fd00::/64"}]]}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || (te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("error is not a CNI error 6 or 7: %#v", err)
			}
			return
		}
		// A configuration that parses is complete: defaults filled, values in range.
		if c.Bridge == "" || c.SDWAN.Database == "" || c.SDWAN.DefaultQoSClass == "" || c.IPAM.Type == "" ||
			(c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535)) || (c.IPAM.Type == HostLocal && c.hostLocal == nil) {
			t.Fatalf("accepted an incomplete configuration: %+v", c)
		}
	})
}

func TestDBErrorCodes(t *testing.T) {
	var te *types.Error
	if err := dbError(errors.New("store: register pod: database is locked (5) (SQLITE_BUSY)")); !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
		t.Fatalf("a lock timeout must be CNI error 11, got %v", err)
	}
	if err := dbError(errors.New("disk I/O error")); errors.As(err, &te) {
		t.Fatalf("other database errors keep their message and code 999, got %v", err)
	}
}
