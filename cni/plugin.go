// Package cni is the Patronus CNI plugin: veth pairs on the cni-bridge0 bridge, IPAM,
// routes, and pod registration in the node database (CNI spec 1.1.0).
package cni

// PluginName is the basename the binary has when the container runtime runs it as a
// CNI plugin (docs/CONTRACT.md).
const PluginName = "patronus-cni"

// Main runs the plugin on the CNI environment and stdin; it exits the process.
func Main() {
	panic("not built yet")
}
