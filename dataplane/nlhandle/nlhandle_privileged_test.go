package nlhandle

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

func TestOpen(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "pt-nlh-" + hex.EncodeToString(b)
	n := enforcetest.NewNS(t, name)

	h, err := Open(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Only lo: the fresh namespace (checked first: a handle in the caller's namespace
	// must not get to add a link there).
	if links, err := h.LinkList(); err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links through the handle: %d (%v), want only lo of the new namespace", len(links), err)
	}
	// A bridge made through the handle is in that namespace, not in the caller's.
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(name); err != nil {
		t.Fatalf("the bridge is not in %s: %v", n.Path(), err)
	}
	own, err := Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if _, err := own.LinkByName(name); err == nil {
		t.Fatalf("%s is in the caller's namespace", name)
	}

	if _, err := Open("/var/run/netns/" + name + "-missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing namespace: %v, want os.ErrNotExist", err)
	}
}
