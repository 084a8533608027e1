package cni

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// HostLocal is the IPAM type the plugin serves in-process.
const HostLocal = "host-local"

// ipamBackend allocates addresses for attachments. Both implementations keep their state
// where the IPAM plugin of that type keeps it, so switching between them is safe.
type ipamBackend interface {
	Add(args *skel.CmdArgs) (*current.Result, error)
	Del(args *skel.CmdArgs) error
	Check(args *skel.CmdArgs) error
	Status() error
	GC(valid []types.GCAttachment) error
}

// newIPAM picks the backend: host-local runs in this process on the host-local plugin's
// on-disk store (same files, same lock; hostlocal.go) unless delegation is forced;
// any other type is executed as a delegated IPAM plugin found in CNI_PATH.
func newIPAM(conf *NetConf, cniArgs string, forceExec bool) (ipamBackend, error) {
	if conf.IPAM.Type != HostLocal || forceExec {
		return execIPAM{typ: conf.IPAM.Type, raw: conf.raw}, nil
	}
	ic := conf.hostLocal
	if a := ipArg(cniArgs); a != "" {
		var err error
		if ic, err = parseHostLocal(conf.raw, a); err != nil {
			return nil, invalid("ipam", "host-local: %v", err)
		}
	}
	return &hostLocal{conf: ic}, nil
}

// ipArg keeps only the IP=... key of CNI_ARGS, the one host-local reads.
func ipArg(cniArgs string) string {
	for _, kv := range strings.Split(cniArgs, ";") {
		if strings.HasPrefix(kv, "IP=") {
			return kv
		}
	}
	return ""
}

// execIPAM delegates to an IPAM plugin binary (CNI spec "Delegated plugins").
type execIPAM struct {
	typ string
	raw []byte
}

func (e execIPAM) Add(*skel.CmdArgs) (*current.Result, error) {
	r, err := invoke.DelegateAdd(context.Background(), e.typ, e.raw, nil)
	if err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("IPAM plugin %s returned a result this plugin cannot read: %w", e.typ, err)
	}
	return res, nil
}

func (e execIPAM) Del(*skel.CmdArgs) error {
	return invoke.DelegateDel(context.Background(), e.typ, e.raw, nil)
}

func (e execIPAM) Check(*skel.CmdArgs) error {
	return invoke.DelegateCheck(context.Background(), e.typ, e.raw, nil)
}

func (e execIPAM) Status() error {
	return invoke.DelegateStatus(context.Background(), e.typ, e.raw, nil)
}
func (e execIPAM) GC([]types.GCAttachment) error {
	// The configuration already carries cni.dev/valid-attachments.
	return invoke.DelegateGC(context.Background(), e.typ, e.raw, nil)
}

// hostLocal is the host-local plugin's allocation done in-process: it saves an exec per
// ADD and DEL and shares the data dir and its flock with the host-local binary.
type hostLocal struct {
	conf *hostLocalConf
}

func (h *hostLocal) store() (*disk.Store, error) {
	s, err := disk.New(h.conf.Network, h.conf.DataDir)
	if err != nil {
		return nil, fmt.Errorf("host-local IPAM: open data dir %s: %w", h.dataDir(), err)
	}
	return s, nil
}

func (h *hostLocal) dataDir() string { return h.conf.dir() }

func (h *hostLocal) Add(args *skel.CmdArgs) (*current.Result, error) {
	s, err := h.store()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ips, err := h.conf.allocate(s, args.ContainerID, args.IfName)
	if err != nil {
		return nil, fmt.Errorf("host-local IPAM (data dir %s): %w", h.dataDir(), err)
	}
	return &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: ips, Routes: h.conf.Routes}, nil
}

func (h *hostLocal) Del(args *skel.CmdArgs) error {
	s, err := h.store()
	if err != nil {
		return err
	}
	defer s.Close()
	if err := h.conf.release(s, args.ContainerID, args.IfName); err != nil {
		return fmt.Errorf("host-local IPAM: release in %s: %w", h.dataDir(), err)
	}
	return nil
}

func (h *hostLocal) Check(args *skel.CmdArgs) error {
	s, err := h.store()
	if err != nil {
		return err
	}
	defer s.Close()
	if !s.FindByID(args.ContainerID, args.IfName) {
		return fmt.Errorf("host-local IPAM: no address reserved for container %s interface %s in %s", args.ContainerID, args.IfName, h.dataDir())
	}
	return nil
}

// Status checks what an allocation needs: a writable data dir.
func (h *hostLocal) Status() error {
	dir := h.dataDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("host-local IPAM: data dir %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".status-*")
	if err != nil {
		return fmt.Errorf("host-local IPAM: data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (h *hostLocal) GC(valid []types.GCAttachment) error {
	s, err := h.store()
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.GC(valid); err != nil {
		return fmt.Errorf("host-local IPAM: GC of %s: %w", h.dataDir(), err)
	}
	return nil
}
