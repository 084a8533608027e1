// Package cni is the Patronus CNI plugin: veth pairs on the cni-bridge0 bridge, IPAM,
// routes, and pod registration in the node database (CNI spec 1.1.0).
//
// The plugin runs as a short-lived process per call. ADD allocates addresses (in-process
// for host-local, delegated otherwise), ensures the bridge with the gateway address,
// creates the veth pair straight into the pod namespace, configures the pod side, turns on
// forwarding in the node namespace and registers the attachment in the node database;
// any failure undoes what this ADD created. DEL is idempotent, CHECK compares the kernel
// with prevResult, STATUS reports whether ADD could succeed, GC removes what the runtime
// no longer lists.
package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

// PluginName is the basename the binary has when the container runtime runs it as a
// CNI plugin (docs/CONTRACT.md).
const PluginName = "patronus-cni"

// Options configure a Plugin.
type Options struct {
	Kernel link.Kernel // the node's kernel; link.Netlink{} in production
	Stdout io.Writer   // where results go (the runtime reads stdout)
	Log    *slog.Logger
	// ExecIPAM forces delegation to the IPAM binary even for host-local (benchmarks
	// compare both).
	ExecIPAM bool
	// LeaveDBOpen skips closing the node database when a command ends: set by Main,
	// whose process exits right after (see closeDB).
	LeaveDBOpen bool
	// Fault, when set, is called before each ADD step with its name; an error it returns
	// makes that step fail. Tests use it to prove the rollback.
	Fault func(step string) error
}

// Plugin implements the CNI commands.
type Plugin struct{ o Options }

// New returns a Plugin; zero options get production defaults.
func New(o Options) *Plugin {
	if o.Kernel == nil {
		o.Kernel = link.Netlink{}
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return &Plugin{o: o}
}

// Main runs the plugin on the CNI environment and stdin; it exits the process.
func Main() {
	p := New(Options{ExecIPAM: os.Getenv("PATRONUS_CNI_EXEC_IPAM") == "1", LeaveDBOpen: true})
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC,
	}, version.PluginSupports(SupportedVersions...), "CNI plugin patronus-cni (Patronus SD-WAN)")
}

func (p *Plugin) fault(step string) error {
	if p.o.Fault == nil {
		return nil
	}
	if err := p.o.Fault(step); err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	return nil
}

// podArgs are the CNI_ARGS keys the plugin records.
type podArgs struct {
	Namespace, Name, UID string
}

// parseArgs reads CNI_ARGS ("K=V;K=V"). Unknown keys are ignored: runtimes add their own.
func parseArgs(s string) (podArgs, error) {
	var a podArgs
	if s == "" {
		return a, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return a, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			a.Namespace = v
		case "K8S_POD_NAME":
			a.Name = v
		case "K8S_POD_UID":
			a.UID = v
		}
	}
	return a, nil
}

// openDB opens the node database; a lock timeout becomes "try again later" (11).
func openDB(path string) (*store.DB, error) {
	db, err := store.Open(context.Background(), path)
	if err != nil {
		return nil, dbError(fmt.Errorf("node database: %w", err))
	}
	return db, nil
}

// closeDB ends the command's use of the database. The plugin process exits right after a
// command, and closing there is expensive: the last connection to close a WAL database
// checkpoints it, fsyncing the WAL and the database (8.7 ms median of a 20 ms ADD
// measured here), and the next writer then recreates the WAL with two more fsyncs. An
// exit without close is, for SQLite, a crash, which WAL mode is designed to survive:
// committed transactions are in the WAL (in the page cache, so a process exit loses
// nothing) and the next connection recovers them. Only a power loss can drop the last
// registrations, together with the pods they describe. The WAL is checkpointed by SQLite's
// automatic checkpoint (every 1000 pages) and by the agent, which keeps the database open.
func (p *Plugin) closeDB(db *store.DB) {
	if !p.o.LeaveDBOpen {
		db.Close()
	}
}

func dbError(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "database is locked") || strings.Contains(msg, "SQLITE_BUSY") {
		return types.NewError(types.ErrTryAgainLater, msg, "another writer held the node database longer than the busy timeout")
	}
	return err
}

// gatewayOf returns the gateway of an IPAM address: the one IPAM named, else the first
// address of the subnet.
func gatewayOf(ipc *current.IPConfig) netip.Addr {
	if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok && ipc.Gateway != nil {
		return gw.Unmap()
	}
	p, _ := prefixOf(&ipc.Address)
	return p.Masked().Addr().Next()
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

// Add implements CNI ADD.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pa, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	// The database first: if it cannot be opened nothing else is worth doing.
	db, err := openDB(conf.SDWAN.Database)
	if err != nil {
		return err
	}
	defer p.closeDB(db)
	am, err := newIPAM(conf, args.Args, p.o.ExecIPAM)
	if err != nil {
		return err
	}

	// Undo in reverse order on failure. The bridge and the forwarding sysctl are shared
	// by every pod of the node and stay.
	var undo []func() error
	success := false
	defer func() {
		if success {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				p.o.Log.Warn("ADD rollback step failed", "container", args.ContainerID, "err", uerr)
			}
		}
	}()

	if err := p.fault("ipam"); err != nil {
		return err
	}
	res, err := am.Add(args)
	if err != nil {
		return err
	}
	undo = append(undo, func() error { return am.Del(args) })
	if len(res.IPs) == 0 {
		return fmt.Errorf("IPAM plugin %s returned no address", conf.IPAM.Type)
	}

	var gwAddrs, podAddrs []netip.Prefix
	gws := map[bool]netip.Addr{} // by is6
	v4, v6 := false, false
	for _, ipc := range res.IPs {
		a, ok := prefixOf(&ipc.Address)
		if !ok {
			return fmt.Errorf("IPAM plugin %s returned an invalid address %v", conf.IPAM.Type, ipc.Address)
		}
		gw := gatewayOf(ipc)
		ipc.Gateway = gw.AsSlice()
		gws[gw.Is6()] = gw
		podAddrs = append(podAddrs, a)
		gwAddrs = append(gwAddrs, netip.PrefixFrom(gw, a.Bits()))
		v4 = v4 || a.Addr().Is4()
		v6 = v6 || a.Addr().Is6()
	}

	if err := p.fault("bridge"); err != nil {
		return err
	}
	br, err := p.o.Kernel.EnsureBridge(link.BridgeSpec{Name: conf.Bridge, MTU: conf.MTU, Addrs: gwAddrs})
	if err != nil {
		return err
	}

	hostName := link.HostVethName(args.ContainerID, args.IfName)
	if err := p.fault("veth"); err != nil {
		return err
	}
	host, pod, err := p.o.Kernel.AddVeth(link.VethSpec{HostName: hostName, PodIfName: args.IfName, PodNetns: args.Netns, Bridge: conf.Bridge, BridgeIndex: br.Index, MTU: conf.MTU})
	if err != nil {
		return err
	}
	// Deleting the host end deletes the pod end with it.
	undo = append(undo, func() error { return p.o.Kernel.DeleteLink(hostName) })

	var routes []link.Route
	for _, r := range res.Routes {
		dst, ok := prefixOf(&r.Dst)
		if !ok {
			return fmt.Errorf("IPAM plugin %s returned an invalid route %v", conf.IPAM.Type, r.Dst)
		}
		gw, ok := netip.AddrFromSlice(r.GW)
		if !ok || r.GW == nil {
			gw = gws[dst.Addr().Is6()]
			r.GW = gw.AsSlice()
		}
		routes = append(routes, link.Route{Dst: dst.Masked(), GW: gw.Unmap()})
	}
	if err := p.fault("pod"); err != nil {
		return err
	}
	if err := p.o.Kernel.ConfigurePod(link.PodConfig{Netns: args.Netns, IfName: args.IfName, Addrs: podAddrs, Routes: routes}); err != nil {
		return err
	}
	if err := p.fault("forwarding"); err != nil {
		return err
	}
	if err := p.o.Kernel.EnableForwarding(v4, v6); err != nil {
		return err
	}

	if err := p.fault("register"); err != nil {
		return err
	}
	err = withWriteLock(conf.SDWAN.Database, func() error {
		err := db.PutPod(context.Background(), store.Pod{
			ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Network: conf.Name,
			Namespace: pa.Namespace, Name: pa.Name, UID: pa.UID, HostVeth: hostName, IPs: podAddrs,
			QoSClass: conf.SDWAN.DefaultQoSClass,
		})
		if err == nil {
			trimWAL(db)
		}
		return err
	})
	if err != nil {
		return dbError(err)
	}
	undo = append(undo, func() error {
		return withWriteLock(conf.SDWAN.Database, func() error {
			return db.DeletePod(context.Background(), args.ContainerID, args.IfName)
		})
	})

	if conf.SDWAN.EnablePolicyEnforcement && pa.Namespace != "" && pa.Name != "" {
		if err := p.fault("policy"); err != nil {
			return err
		}
		if err := syncPolicy(context.Background(), conf.SDWAN.AgentSocket, localapi.EndpointRequest{
			ContainerID: args.ContainerID, IfName: args.IfName, Namespace: pa.Namespace, Name: pa.Name, UID: pa.UID,
			IPs: ipStrings(podAddrs), HostVeth: hostName,
		}); err != nil {
			return err
		}
	}

	podIdx := 2
	res.Interfaces = []*current.Interface{
		{Name: br.Name, Mac: br.MAC},
		{Name: host.Name, Mac: host.MAC},
		{Name: pod.Name, Mac: pod.MAC, Sandbox: args.Netns, Mtu: pod.MTU},
	}
	for _, ipc := range res.IPs {
		ipc.Interface = &podIdx
	}
	out, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fmt.Errorf("convert result to CNI %s: %w", conf.CNIVersion, err)
	}
	if err := p.fault("result"); err != nil {
		return err
	}
	if err := out.PrintTo(p.o.Stdout); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("write result: %v", err), "")
	}
	success = true
	return nil
}

// Del implements CNI DEL: everything may already be gone, and that is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	hostName := link.HostVethName(args.ContainerID, args.IfName)
	var errs []error
	if err := p.o.Kernel.DeleteLink(hostName); err != nil {
		errs = append(errs, err)
	}
	// The host end may have been renamed or lost its peer; make sure the pod side is gone
	// too before the address is handed out again.
	if err := p.o.Kernel.DeletePodLink(args.Netns, args.IfName); err != nil {
		errs = append(errs, err)
	}
	am, err := newIPAM(conf, args.Args, p.o.ExecIPAM)
	if err != nil {
		return err
	}
	if err := am.Del(args); err != nil {
		errs = append(errs, err)
	}
	db, err := openDB(conf.SDWAN.Database)
	if err != nil {
		errs = append(errs, err)
	} else {
		err := withWriteLock(conf.SDWAN.Database, func() error {
			err := db.DeletePod(context.Background(), args.ContainerID, args.IfName)
			if err == nil {
				trimWAL(db)
			}
			return err
		})
		if err != nil {
			errs = append(errs, dbError(err))
		}
		p.closeDB(db)
	}
	if conf.SDWAN.EnablePolicyEnforcement {
		if pa, perr := parseArgs(args.Args); perr == nil && pa.Namespace != "" {
			if err := removePolicy(conf.SDWAN.AgentSocket, localapi.EndpointRequest{ContainerID: args.ContainerID,
				IfName: args.IfName, Namespace: pa.Namespace, Name: pa.Name, HostVeth: hostName}); err != nil {
				p.o.Log.Info("agent not told about the DEL (it drops the pod on its next sync)", "container", args.ContainerID, "err", err)
			}
		}
	}
	return firstTyped(errs)
}

// firstTyped joins errs, keeping a CNI error code if one of them carries it.
func firstTyped(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	joined := errors.Join(errs...)
	var te *types.Error
	if errors.As(joined, &te) {
		return types.NewError(te.Code, joined.Error(), te.Details)
	}
	return joined
}

// Check implements CNI CHECK against prevResult.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return invalid("prevResult", "CHECK needs the result of ADD")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot convert prevResult: %v", err), "")
	}
	am, err := newIPAM(conf, args.Args, p.o.ExecIPAM)
	if err != nil {
		return err
	}
	if err := am.Check(args); err != nil {
		return err
	}
	hostName := link.HostVethName(args.ContainerID, args.IfName)
	host, err := p.o.Kernel.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth of container %s: %w", args.ContainerID, err)
	}
	br, err := p.o.Kernel.LinkByName(conf.Bridge)
	if err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if host.Master != br.Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", hostName, conf.Bridge)
	}
	podIdx := -1
	for i, itf := range prev.Interfaces {
		if itf.Name == args.IfName && itf.Sandbox != "" {
			podIdx = i
		}
	}
	if podIdx < 0 {
		return fmt.Errorf("prevResult has no interface %s inside a sandbox", args.IfName)
	}
	pc := link.PodConfig{Netns: args.Netns, IfName: args.IfName, MTU: conf.MTU, HostIndex: host.Index}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface != podIdx {
			continue
		}
		a, ok := prefixOf(&ipc.Address)
		if !ok {
			return fmt.Errorf("prevResult has an invalid address %v", ipc.Address)
		}
		pc.Addrs = append(pc.Addrs, a)
	}
	for _, r := range prev.Routes {
		dst, ok := prefixOf(&r.Dst)
		if !ok {
			return fmt.Errorf("prevResult has an invalid route %v", r.Dst)
		}
		rt := link.Route{Dst: dst.Masked()}
		if gw, ok := netip.AddrFromSlice(r.GW); ok && r.GW != nil {
			rt.GW = gw.Unmap()
		}
		pc.Routes = append(pc.Routes, rt)
	}
	if err := p.o.Kernel.CheckPod(pc); err != nil {
		return err
	}
	db, err := openDB(conf.SDWAN.Database)
	if err != nil {
		return err
	}
	defer p.closeDB(db)
	if _, err := db.GetPod(context.Background(), args.ContainerID, args.IfName); err != nil {
		return fmt.Errorf("attachment not registered in %s: %w", conf.SDWAN.Database, err)
	}
	return nil
}
