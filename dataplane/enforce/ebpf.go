package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/bpf"
)

// DefaultPinDir is where programs, maps and links are pinned (docs/CONTRACT.md).
const DefaultPinDir = "/sys/fs/bpf/patronus"

// Options configure the eBPF enforcer.
type Options struct {
	// PinDir is a directory on a bpffs mount; default DefaultPinDir.
	PinDir string
	// NetNS is the path of the network namespace holding the host-side veths (the
	// node's); "" means the caller's.
	NetNS string
	// ServiceCIDRs are destinations whose egress check waits until after DNAT (see
	// from_pod in bpf/src/policy.c).
	ServiceCIDRs []netip.Prefix
	// Uplinks are node interfaces (uplink, tunnels) where traffic of local pods leaves
	// the node; to_net completes the egress check there for Service traffic DNATed to
	// remote pods.
	Uplinks []string
	// RouteUplinks, when Uplinks is empty, attaches to_net to the devices of the node's
	// routes instead (underlay, VXLAN, WireGuard: wherever pod traffic leaves for other
	// nodes), found again on every Set so that tunnels created later are covered (from
	// link and route notifications: a Set where no link or route changed dumps
	// nothing). Pod veths, their bridge and lo are left out.
	RouteUplinks bool
	Logger       *slog.Logger
}

// EBPF enforces policy with the TC programs of package bpf. It implements Enforcer.
type EBPF struct {
	opts    Options
	log     *slog.Logger
	objs    bpf.PolicyObjects
	linkDir string

	mu      sync.Mutex
	sync    *syncer
	uplinks *uplinkView         // the node's links and route devices, with RouteUplinks
	byIf    map[uint32]Endpoint // last applied, to name events and counters
	linked  map[string]bool     // "ifindex/veth" whose links this process has ensured
	closed  bool
}

const bpffsMagic = 0xcafe4a11

// NewEBPF loads the programs, reusing maps already pinned in PinDir (conntrack, rule
// sets and counters of a previous agent survive), and atomically replaces the program
// of every pinned link with the new one: enforcement never stops during a restart.
func NewEBPF(opts Options) (*EBPF, error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin dir: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(opts.PinDir, &st); err != nil {
		return nil, fmt.Errorf("pin dir %s: %w", opts.PinDir, err)
	}
	if st.Type != bpffsMagic {
		return nil, fmt.Errorf("pin dir %s is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", opts.PinDir)
	}
	e := &EBPF{opts: opts, log: opts.Logger, linkDir: filepath.Join(opts.PinDir, "links"), byIf: map[uint32]Endpoint{}, linked: map[string]bool{}}
	if err := os.MkdirAll(e.linkDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating link dir: %w", err)
	}
	spec, err := bpf.LoadPolicy()
	if err != nil {
		return nil, fmt.Errorf("loading BPF spec: %w", err)
	}
	if err := spec.LoadAndAssign(&e.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}); err != nil {
		return nil, fmt.Errorf("loading BPF objects (pinned maps in %s): %w", opts.PinDir, err)
	}
	ok := false
	defer func() {
		if !ok {
			e.objs.Close()
		}
	}()
	for name, p := range e.progs() {
		path := filepath.Join(opts.PinDir, name)
		_ = os.Remove(path) // the old program stays alive through its links
		if err := p.Pin(path); err != nil {
			return nil, fmt.Errorf("pinning program %s: %w", name, err)
		}
	}
	if e.sync, err = newSyncer(mapsOf(&e.objs)); err != nil {
		return nil, err
	}
	if err := e.sync.setDeferred(opts.ServiceCIDRs); err != nil {
		return nil, err
	}
	if err := e.replacePrograms(); err != nil {
		return nil, err
	}
	if err := e.inNS(func() error {
		for _, up := range opts.Uplinks {
			l, err := netlink.LinkByName(up)
			if err != nil {
				return fmt.Errorf("uplink %s: %w", up, err)
			}
			name, prog := e.uplinkProgram(l)
			if err := e.ensureLink(l.Attrs().Index, name, ebpf.AttachTCXEgress, prog); err != nil {
				return fmt.Errorf("uplink %s: %w", up, err)
			}
		}
		if len(opts.Uplinks) == 0 && opts.RouteUplinks {
			var err error
			if e.uplinks, err = openUplinkView(); err != nil {
				e.log.Warn("not following link and route changes: every policy sync dumps them", "err", err)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

func (e *EBPF) progs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{"from_pod": e.objs.FromPod, "to_pod": e.objs.ToPod, "to_net": e.objs.ToNet,
		"to_net_l3": e.objs.ToNetL3}
}

// uplinkProgram is the egress program of an uplink: to_net on Ethernet devices, to_net_l3
// on devices whose packets carry no link-layer header (WireGuard, tun, IP tunnels: the
// IP header is the first byte TC sees).
func (e *EBPF) uplinkProgram(l netlink.Link) (string, *ebpf.Program) {
	if isL3Device(l) {
		return "to_net_l3", e.objs.ToNetL3
	}
	return "to_net", e.objs.ToNet
}

func isL3Device(l netlink.Link) bool {
	switch l.Attrs().EncapType {
	case "ether", "loopback", "":
		return false
	}
	return true
}

// uplinkLink tells the pinned links of uplinks from those of pod veths.
func uplinkLink(name string) bool { return name == "to_net" || name == "to_net_l3" }

func (e *EBPF) inNS(f func() error) error {
	if e.opts.NetNS == "" {
		return f()
	}
	return ns.WithNetNSPath(e.opts.NetNS, func(ns.NetNS) error { return f() })
}

// linkPath names a pinned link "<ifindex>-<program>".
func (e *EBPF) linkPath(ifindex int, prog string) string {
	return filepath.Join(e.linkDir, strconv.Itoa(ifindex)+"-"+prog)
}

// replacePrograms points every pinned link at this process's programs (BPF_LINK_UPDATE:
// atomic, no packet sees an empty hook).
func (e *EBPF) replacePrograms() error {
	ents, err := os.ReadDir(e.linkDir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.linkDir, err)
	}
	progs := e.progs()
	var errs []error
	for _, ent := range ents {
		_, name, ok := strings.Cut(ent.Name(), "-")
		p := progs[name]
		if !ok || p == nil {
			continue
		}
		path := filepath.Join(e.linkDir, ent.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("loading pinned link %s: %w", path, err))
			continue
		}
		if err := l.Update(p); errors.Is(err, unix.ENOLINK) {
			// Its device is gone (a tunnel or pod veth deleted while no agent ran).
			_ = l.Unpin()
		} else if err != nil {
			errs = append(errs, fmt.Errorf("updating link %s: %w", path, err))
		}
		l.Close()
	}
	return errors.Join(errs...)
}

// ensureLink makes sure a pinned TCX link runs prog on ifindex. Must run in the
// node namespace.
func (e *EBPF) ensureLink(ifindex int, name string, attach ebpf.AttachType, prog *ebpf.Program) error {
	path := e.linkPath(ifindex, name)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := l.Info()
		// A link whose device is gone (or a reused ifindex) reports another ifindex.
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			pinfo, _ := prog.Info()
			id, _ := pinfo.ID()
			var uerr error
			if info.Program != id {
				uerr = l.Update(prog)
			}
			l.Close()
			return uerr
		}
		_ = l.Unpin()
		l.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: attach, Anchor: link.Head()})
	if err != nil {
		return fmt.Errorf("attaching %s to ifindex %d: %w", name, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pinning link %s: %w", path, err)
	}
	return nil
}

// Set implements Enforcer.
func (e *EBPF) Set(ctx context.Context, endpoints []Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("enforcer closed")
	}
	desired := map[uint32]Endpoint{}
	var errs []error
	err := e.inNS(func() error {
		// With route uplinks, the followed view names the veths too. If it cannot be
		// brought up to date (a failed dump, retried next Set), this Set does what it
		// can without it, as when a route listing failed before.
		var byName map[string]int
		var upErr error
		if e.uplinks != nil {
			if upErr = e.uplinks.refresh(); upErr == nil {
				byName = e.uplinks.byName
			}
		}
		if byName == nil {
			var err error
			if byName, err = linkIndexes(); err != nil {
				return errors.Join(upErr, err)
			}
		}
		for _, ep := range endpoints {
			idx, ok := byName[ep.HostVeth]
			if !ok {
				errs = append(errs, fmt.Errorf("endpoint %s: veth %q: %w", ep.Key(), ep.HostVeth, ErrNoInterface))
				continue
			}
			desired[uint32(idx)] = ep
		}
		// Maps first, then links: a newly attached program finds its endpoint's rules.
		errs = append(errs, e.sync.sync(desired))
		switch {
		case upErr != nil:
			errs = append(errs, upErr)
		case e.uplinks != nil:
			errs = append(errs, e.linkRouteUplinks(desired))
		}
		for ifindex := range desired {
			if err := ctx.Err(); err != nil {
				return err
			}
			// Links this process attached or checked stay valid while their interface
			// lives (an ifindex is not reused while the veth exists; a new veth under
			// an old ifindex has a different name, hence the name in the key).
			key := fmt.Sprintf("%d/%s", ifindex, desired[ifindex].HostVeth)
			if e.linked[key] {
				continue
			}
			if err := e.ensureLink(int(ifindex), "from_pod", ebpf.AttachTCXIngress, e.objs.FromPod); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := e.ensureLink(int(ifindex), "to_pod", ebpf.AttachTCXEgress, e.objs.ToPod); err != nil {
				errs = append(errs, err)
				continue
			}
			e.linked[key] = true
		}
		errs = append(errs, e.gcLinks(desired))
		return nil
	})
	e.byIf = desired
	return errors.Join(append(errs, err)...)
}

// linkRouteUplinks attaches to_net at TC egress of every device a route of the node
// namespace points at, except pod veths (to_pod's) and other bridge ports, the bridges
// of pod veths (traffic to local pods, checked by to_pod) and lo. Must run in the node
// namespace, after e.uplinks.refresh.
func (e *EBPF) linkRouteUplinks(endpoints map[uint32]Endpoint) error {
	// Forget devices that are gone or renamed: a device that comes back under the same
	// index is checked again.
	for k := range e.linked {
		rest, ok := strings.CutPrefix(k, "net:")
		if !ok {
			continue
		}
		idx, name, _ := strings.Cut(rest, "/")
		i, _ := strconv.Atoi(idx)
		if l, ok := e.uplinks.links[i]; !ok || l.Attrs().Name != name {
			delete(e.linked, k)
		}
	}
	var errs []error
	for _, l := range e.uplinks.uplinkDevices(endpoints) {
		idx := l.Attrs().Index
		key := fmt.Sprintf("net:%d/%s", idx, l.Attrs().Name)
		if e.linked[key] {
			continue
		}
		name, prog := e.uplinkProgram(l)
		if err := e.ensureLink(idx, name, ebpf.AttachTCXEgress, prog); err != nil {
			errs = append(errs, fmt.Errorf("uplink %s: %w", l.Attrs().Name, err))
			continue
		}
		e.log.Info("egress check after DNAT on uplink", "device", l.Attrs().Name)
		e.linked[key] = true
	}
	return errors.Join(errs...)
}

// gcLinks unpins veth links of interfaces that are no longer endpoints (the uplink
// links stay).
func (e *EBPF) gcLinks(desired map[uint32]Endpoint) error {
	ents, err := os.ReadDir(e.linkDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, ent := range ents {
		idx, name, ok := strings.Cut(ent.Name(), "-")
		if !ok || uplinkLink(name) {
			continue
		}
		i, err := strconv.Atoi(idx)
		if err != nil {
			continue
		}
		if _, ok := desired[uint32(i)]; ok {
			continue
		}
		for k := range e.linked {
			if strings.HasPrefix(k, idx+"/") {
				delete(e.linked, k)
			}
		}
		if err := os.Remove(filepath.Join(e.linkDir, ent.Name())); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Remove implements Enforcer: it drops the endpoint found by its veth, its addresses or
// its name. It reads the kernel state, not only memory: after a restart the first call
// may be a Remove.
func (e *EBPF) Remove(ctx context.Context, ep Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("enforcer closed")
	}
	gone := map[uint32]bool{}
	for _, a := range ep.IPs {
		var v bpf.PolicyEndpoint
		if err := e.objs.PtEndpointIps.Lookup(addr16(a), &v); err == nil {
			gone[v.Ifindex] = true
		}
	}
	for i, d := range e.byIf {
		if d.Key() == ep.Key() {
			gone[i] = true
		}
	}
	_ = e.inNS(func() error {
		if l, err := netlink.LinkByName(ep.HostVeth); err == nil {
			gone[uint32(l.Attrs().Index)] = true
		}
		return nil
	})
	var errs []error
	var ifs []uint32
	for i := range gone {
		ifs = append(ifs, i)
		for _, p := range []string{"from_pod", "to_pod"} {
			if err := os.Remove(e.linkPath(int(i), p)); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
		delete(e.byIf, i)
		for k := range e.linked {
			if strings.HasPrefix(k, strconv.Itoa(int(i))+"/") {
				delete(e.linked, k)
			}
		}
	}
	// Addresses of the endpoint: those given, and those the kernel maps to it.
	var addrs [][16]byte
	for _, a := range ep.IPs {
		addrs = append(addrs, addr16(a))
	}
	for a, v := range e.sync.ips {
		if gone[v.Ifindex] {
			addrs = append(addrs, a)
		}
	}
	errs = append(errs, e.sync.remove(ifs, addrs))
	return errors.Join(errs...)
}

// Close releases file descriptors; pinned programs, maps and links keep enforcing.
func (e *EBPF) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	if e.uplinks != nil {
		e.uplinks.close()
	}
	return e.objs.Close()
}

// Uninstall removes all pinned state (links detach, maps go when unused). For
// `patronus agent --cleanup`-style teardown and tests; not called on restart.
func (e *EBPF) Uninstall() error {
	if err := os.RemoveAll(e.opts.PinDir); err != nil {
		return fmt.Errorf("removing %s: %w", e.opts.PinDir, err)
	}
	return nil
}

// linkIndexes maps interface names to indexes with one netlink dump, retried when the
// kernel reports the dump was interrupted by a concurrent change.
func linkIndexes() (map[string]int, error) {
	var links []netlink.Link
	err := retryInterrupted(func() (err error) {
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := make(map[string]int, len(links))
	for _, l := range links {
		out[l.Attrs().Name] = l.Attrs().Index
	}
	return out, nil
}

// MountBPFFS mounts a bpffs on dir unless one is already there (the agent calls it for
// /sys/fs/bpf at start; this machine's images do not mount it).
func MountBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == bpffsMagic {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs on %s: %w", dir, err)
	}
	return nil
}
