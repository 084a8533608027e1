package nodenet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/nodenet/alloc"
)

// RenderConfList returns base (a conflist such as manifests.ConfList) with the
// patronus-cni entry's IPAM range set to block: host-local `subnet` = the block and
// `gateway` = its first address (the bridge address). A `ranges` list is replaced by the
// one range; rangeStart/rangeEnd, which belonged to the old subnet, are dropped. Every
// other field is kept as it was, so the result has the same shape as the seed's file.
func RenderConfList(base []byte, block netip.Prefix) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(base, &doc); err != nil {
		return nil, fmt.Errorf("nodenet: base conflist: %w", err)
	}
	plugins, _ := doc["plugins"].([]any)
	found := false
	for _, p := range plugins {
		pm, ok := p.(map[string]any)
		if !ok || pm["type"] != cni.PluginName {
			continue
		}
		ipam, ok := pm["ipam"].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("nodenet: base conflist: %s entry has no ipam section", cni.PluginName)
		}
		block = block.Masked()
		gw := alloc.Gateway(block).String()
		if _, ok := ipam["ranges"]; ok {
			ipam["ranges"] = []any{[]any{map[string]any{"subnet": block.String(), "gateway": gw}}}
			delete(ipam, "subnet")
		} else {
			ipam["subnet"] = block.String()
		}
		ipam["gateway"] = gw
		delete(ipam, "rangeStart")
		delete(ipam, "rangeEnd")
		found = true
	}
	if !found {
		return nil, fmt.Errorf("nodenet: base conflist has no %q plugin", cni.PluginName)
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	out = append(out, '\n')
	// What a runtime will read must parse as a conflist.
	if _, err := libcni.NetworkConfFromBytes(out); err != nil {
		return nil, fmt.Errorf("nodenet: rendered conflist does not parse: %w", err)
	}
	return out, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same directory and
// a rename, so a runtime never reads a half-written conflist. An identical file is left
// untouched (changed reports whether it wrote).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("nodenet: conf dir: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, fmt.Errorf("nodenet: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return false, fmt.Errorf("nodenet: write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("nodenet: write %s: %w", path, err)
	}
	return true, nil
}
