package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults (docs/CONTRACT.md).
const (
	DefaultBridge      = "cni-bridge0"
	DefaultDatabase    = "/var/lib/patronus/k8s-sdwan.db"
	DefaultAgentSocket = "/var/run/patronus/agent.sock"
	DefaultQoSClass    = "best-effort"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// QoSClasses are the values of sdwan.default_qos_class and the pod annotation
// patronus.io/qos-class.
var QoSClasses = []string{"latency-sensitive", "bulk", "best-effort"}

// NetConf is the plugin's network configuration (one entry of the conflist, with the
// list's name and cniVersion injected by the runtime).
type NetConf struct {
	types.PluginConf
	Bridge string    `json:"bridge"`
	MTU    int       `json:"mtu,omitempty"`
	SDWAN  SDWANConf `json:"sdwan"`

	// ValidAttachments is cni.dev/valid-attachments, present on GC only.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`

	// raw is the original document, handed to IPAM as is.
	raw []byte
	// hostLocal is the parsed ipam section when its type is host-local.
	hostLocal *hostLocalConf
}

// SDWANConf is the "sdwan" section.
type SDWANConf struct {
	Database                string `json:"database"`
	ClusterID               string `json:"cluster_id,omitempty"`
	EnablePolicyEnforcement bool   `json:"enable_policy_enforcement,omitempty"`
	DefaultQoSClass         string `json:"default_qos_class,omitempty"`
	// AgentSocket is the agent's HTTP API socket; STATUS asks its /readyz when policy
	// enforcement is on.
	AgentSocket string `json:"agent_socket,omitempty"`
}

// Raw is the configuration exactly as the runtime passed it.
func (c *NetConf) Raw() []byte { return c.raw }

// invalid is a CNI error 7 naming the field.
func invalid(field, format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("invalid network configuration: field %q: %s", field, fmt.Sprintf(format, args...)), "")
}

// ParseConfig decodes and validates a plugin configuration and fills defaults. Every error
// is a *types.Error: code 6 when the bytes are not a JSON object of the right shape, code
// 7 when a field is invalid (the message names the field).
func ParseConfig(b []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, decodeError(err)
	}
	c.raw = b
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeError(err error) *types.Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("cannot decode network configuration: field %q must be a %s, not a JSON %s", te.Field, te.Type, te.Value), "")
	}
	return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode network configuration: %v", err), "")
}

func (c *NetConf) validate() *types.Error {
	if c.CNIVersion == "" {
		return invalid("cniVersion", "missing; supported: %s", strings.Join(SupportedVersions, ", "))
	}
	if !slices.Contains(SupportedVersions, c.CNIVersion) {
		return invalid("cniVersion", "%q is not supported; supported: %s", c.CNIVersion, strings.Join(SupportedVersions, ", "))
	}
	if c.Name == "" {
		return invalid("name", "missing network name")
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if err := validIfName(c.Bridge); err != "" {
		return invalid("bridge", "%q %s", c.Bridge, err)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return invalid("mtu", "%d is out of range 68..65535 (omit it for the kernel default)", c.MTU)
	}
	if c.IPAM.Type == "" {
		return invalid("ipam.type", "missing: name an IPAM plugin such as host-local")
	}
	if strings.ContainsAny(c.IPAM.Type, "/\\") || c.IPAM.Type == "." || c.IPAM.Type == ".." {
		return invalid("ipam.type", "%q must be a plugin name, not a path", c.IPAM.Type)
	}
	if c.IPAM.Type == HostLocal {
		ic, err := parseHostLocal(c.raw, "")
		if err != nil {
			return invalid("ipam", "host-local: %v", err)
		}
		c.hostLocal = ic
	}
	s := &c.SDWAN
	if s.Database == "" {
		s.Database = DefaultDatabase
	}
	if !filepath.IsAbs(s.Database) {
		return invalid("sdwan.database", "%q must be an absolute path", s.Database)
	}
	if s.AgentSocket == "" {
		s.AgentSocket = DefaultAgentSocket
	}
	if !filepath.IsAbs(s.AgentSocket) {
		return invalid("sdwan.agent_socket", "%q must be an absolute path", s.AgentSocket)
	}
	if s.DefaultQoSClass == "" {
		s.DefaultQoSClass = DefaultQoSClass
	}
	if !slices.Contains(QoSClasses, s.DefaultQoSClass) {
		return invalid("sdwan.default_qos_class", "%q is not one of %s", s.DefaultQoSClass, strings.Join(QoSClasses, ", "))
	}
	if s.ClusterID != "" && !validClusterID(s.ClusterID) {
		return invalid("sdwan.cluster_id", "%q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", s.ClusterID)
	}
	return nil
}

// validIfName returns why name cannot be a Linux interface name, or "".
func validIfName(name string) string {
	switch {
	case len(name) > 15:
		return "is longer than 15 characters"
	case name == "." || name == "..":
		return "is not a valid interface name"
	case strings.ContainsAny(name, "/: \t\n\x00"):
		return "contains '/', ':', a space or a control character"
	}
	return ""
}

func validClusterID(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && (r != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// ConfList is the part of a network configuration list install-cni validates.
type ConfList struct {
	CNIVersion  string            `json:"cniVersion"`
	CNIVersions []string          `json:"cniVersions,omitempty"`
	Name        string            `json:"name"`
	Plugins     []json.RawMessage `json:"plugins"`
}

// ParseConfList validates a conflist: its versions, and every patronus-cni entry as the
// runtime would hand it to the plugin (name and cniVersion injected).
func ParseConfList(b []byte) (*ConfList, error) {
	l := &ConfList{}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, decodeError(err)
	}
	if l.Name == "" {
		return nil, invalid("name", "missing network name")
	}
	versions := l.CNIVersions
	if l.CNIVersion != "" {
		versions = append([]string{l.CNIVersion}, versions...)
	}
	if len(versions) == 0 {
		return nil, invalid("cniVersion", "missing (set cniVersion or cniVersions)")
	}
	for _, v := range versions {
		if !slices.Contains(SupportedVersions, v) {
			field := "cniVersions"
			if v == l.CNIVersion {
				field = "cniVersion"
			}
			return nil, invalid(field, "%q is not supported; supported: %s", v, strings.Join(SupportedVersions, ", "))
		}
	}
	if len(l.Plugins) == 0 {
		return nil, invalid("plugins", "the list has no plugins")
	}
	found := false
	for i, p := range l.Plugins {
		var entry map[string]any
		if err := json.Unmarshal(p, &entry); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode plugins[%d]: %v", i, err), "")
		}
		if entry["type"] != PluginName {
			continue
		}
		found = true
		entry["name"] = l.Name
		entry["cniVersion"] = highest(versions)
		one, _ := json.Marshal(entry)
		if _, err := ParseConfig(one); err != nil {
			var e *types.Error
			if errors.As(err, &e) {
				return nil, types.NewError(e.Code, fmt.Sprintf("plugins[%d]: %s", i, e.Msg), e.Details)
			}
			return nil, err
		}
	}
	if !found {
		return nil, invalid("plugins", "no entry has \"type\": %q", PluginName)
	}
	return l, nil
}

// highest returns the newest of supported versions (the one a runtime picks from
// cniVersions).
func highest(vs []string) string {
	best := ""
	for _, v := range vs {
		if best == "" || slices.Index(SupportedVersions, v) > slices.Index(SupportedVersions, best) {
			best = v
		}
	}
	return best
}
