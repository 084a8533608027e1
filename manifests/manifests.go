// Package manifests embeds the deployment files the binary writes itself, so
// `patronus install-cni` needs nothing but the binary.
package manifests

import _ "embed"

// ConfList is 10-patronus.conflist, the CNI configuration install-cni writes by default.
//
//go:embed 10-patronus.conflist
var ConfList []byte

// ConfListName is the file name of ConfList in the CNI conf dir (docs/CONTRACT.md).
const ConfListName = "10-patronus.conflist"
