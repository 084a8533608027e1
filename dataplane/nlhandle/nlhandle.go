// Package nlhandle opens a netlink handle in a network namespace named by its path: the
// way the dataplane packages reach a namespace (a pod's, a test's, the node's when the
// agent runs in another) without moving any thread into it.
package nlhandle

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Open returns a netlink handle in the network namespace at nsPath ("" = the caller's).
// The namespace file is held only while the handle is made (its sockets keep the
// namespace); the caller closes the handle.
func Open(nsPath string) (*netlink.Handle, error) {
	if nsPath == "" {
		return netlink.NewHandle()
	}
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", nsPath, err)
	}
	return h, nil
}
