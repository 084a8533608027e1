package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
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

// newIPAM picks the backend: host-local runs in this process with the host-local plugin's
// own allocator and on-disk store (same files, same lock) unless delegation is forced;
// any other type is executed as a delegated IPAM plugin found in CNI_PATH.
func newIPAM(conf *NetConf, cniArgs string, forceExec bool) (ipamBackend, error) {
	if conf.IPAM.Type != HostLocal || forceExec {
		return execIPAM{typ: conf.IPAM.Type, raw: conf.raw}, nil
	}
	ic := conf.hostLocal
	if a := ipArg(cniArgs); a != "" {
		var err error
		if ic, _, err = allocator.LoadIPAMConfig(conf.raw, a); err != nil {
			return nil, invalid("ipam", "host-local: %v", err)
		}
	}
	return &hostLocal{conf: ic, cniVersion: conf.CNIVersion}, nil
}

// ipArg keeps only the IP=... key of CNI_ARGS, the one host-local reads: the allocator's
// parser rejects the other keys runtimes send unless IgnoreUnknown is set.
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
	r, err := ipam.ExecAdd(e.typ, e.raw)
	if err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("IPAM plugin %s returned a result this plugin cannot read: %w", e.typ, err)
	}
	return res, nil
}

func (e execIPAM) Del(*skel.CmdArgs) error   { return ipam.ExecDel(e.typ, e.raw) }
func (e execIPAM) Check(*skel.CmdArgs) error { return ipam.ExecCheck(e.typ, e.raw) }
func (e execIPAM) Status() error             { return ipam.ExecStatus(e.typ, e.raw) }
func (e execIPAM) GC([]types.GCAttachment) error {
	// The configuration already carries cni.dev/valid-attachments.
	return invoke.DelegateGC(context.Background(), e.typ, e.raw, nil)
}

// hostLocal is the host-local plugin's allocation done in-process: it saves an exec per
// ADD and DEL and shares the data dir and its flock with the host-local binary.
type hostLocal struct {
	conf       *allocator.IPAMConfig
	cniVersion string
}

func (h *hostLocal) store() (*disk.Store, error) {
	s, err := disk.New(h.conf.Name, h.conf.DataDir)
	if err != nil {
		return nil, fmt.Errorf("host-local IPAM: open data dir %s: %w", h.dataDir(), err)
	}
	return s, nil
}

func (h *hostLocal) dataDir() string {
	d := h.conf.DataDir
	if d == "" {
		d = "/var/lib/cni/networks"
	}
	return filepath.Join(d, h.conf.Name)
}

func (h *hostLocal) Add(args *skel.CmdArgs) (*current.Result, error) {
	s, err := h.store()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: h.conf.Routes}
	requested := map[string]net.IP{}
	for _, ip := range h.conf.IPArgs {
		requested[ip.String()] = ip
	}
	var used []*allocator.IPAllocator
	release := func() {
		for _, a := range used {
			_ = a.Release(args.ContainerID, args.IfName)
		}
	}
	for i := range h.conf.Ranges {
		rs := &h.conf.Ranges[i]
		a := allocator.NewIPAllocator(rs, s, i)
		var want net.IP
		for k, ip := range requested {
			if rs.Contains(ip) {
				want = ip
				delete(requested, k)
				break
			}
		}
		ipc, err := a.Get(args.ContainerID, args.IfName, want)
		if err != nil {
			release()
			return nil, fmt.Errorf("host-local IPAM: allocate from range set %d (data dir %s): %w", i, h.dataDir(), err)
		}
		used = append(used, a)
		res.IPs = append(res.IPs, ipc)
	}
	if len(requested) != 0 {
		release()
		var ips []string
		for k := range requested {
			ips = append(ips, k)
		}
		return nil, fmt.Errorf("host-local IPAM: requested addresses %s are in no configured range", strings.Join(ips, ", "))
	}
	return res, nil
}

func (h *hostLocal) Del(args *skel.CmdArgs) error {
	s, err := h.store()
	if err != nil {
		return err
	}
	defer s.Close()
	var errs []error
	for i := range h.conf.Ranges {
		if err := allocator.NewIPAllocator(&h.conf.Ranges[i], s, i).Release(args.ContainerID, args.IfName); err != nil {
			errs = append(errs, fmt.Errorf("host-local IPAM: release range set %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
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
