package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/patronus/patronus/dataplane/link"
)

// agentReadyTimeout bounds STATUS's question to the agent; the runtime calls STATUS
// often and must not hang on a stuck agent.
const agentReadyTimeout = 2 * time.Second

// Status implements CNI STATUS: an error (50) only when ADD could not succeed now. A
// missing bridge is fine: ADD creates it.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	notAvailable := func(err error) error {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	db, err := openDB(conf.SDWAN.Database)
	if err != nil {
		return notAvailable(err)
	}
	perr := db.Ping(context.Background())
	p.closeDB(db)
	if perr != nil {
		return notAvailable(perr)
	}
	am, err := newIPAM(conf, args.Args, p.o.ExecIPAM)
	if err != nil {
		return err
	}
	if err := am.Status(); err != nil {
		var te *types.Error
		if errors.As(err, &te) && (te.Code == types.ErrPluginNotAvailable || te.Code == types.ErrLimitedConnectivity) {
			return te
		}
		return notAvailable(fmt.Errorf("IPAM %s not ready: %w", conf.IPAM.Type, err))
	}
	if conf.SDWAN.EnablePolicyEnforcement {
		if err := AgentReady(context.Background(), conf.SDWAN.AgentSocket); err != nil {
			return notAvailable(fmt.Errorf("policy enforcement is on but the agent is not ready: %w", err))
		}
	}
	return nil
}

// AgentReady asks the agent's /readyz over its unix socket; nil means HTTP 200.
func AgentReady(ctx context.Context, socket string) error {
	ctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("agent socket %s: %w", socket, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent socket %s: /readyz answered %s", socket, resp.Status)
	}
	return nil
}

// gcConf reads the valid attachments; libcni sends both the spec's key and the older
// misspelt one.
type gcConf struct {
	Valid  []types.GCAttachment `json:"cni.dev/valid-attachments"`
	Legacy []types.GCAttachment `json:"cni.dev/attachments"`
}

// GC implements CNI GC: every veth, database row and address reservation of this network
// whose attachment is not in cni.dev/valid-attachments goes; IPAM gets the GC too.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var g gcConf
	if err := json.Unmarshal(args.StdinData, &g); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode cni.dev/valid-attachments: %v", err), "")
	}
	valid := g.Valid
	if valid == nil {
		valid = g.Legacy
	}
	keep := map[types.GCAttachment]bool{}
	keepVeth := map[string]bool{}
	for _, a := range valid {
		keep[a] = true
		keepVeth[link.HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []error

	db, err := openDB(conf.SDWAN.Database)
	if err != nil {
		return err
	}
	defer p.closeDB(db)
	ctx := context.Background()
	pods, err := db.ListPods(ctx)
	if err != nil {
		return dbError(err)
	}
	for _, pod := range pods {
		if pod.Network != conf.Name || keep[types.GCAttachment{ContainerID: pod.ContainerID, IfName: pod.IfName}] {
			continue
		}
		if pod.HostVeth != "" && !keepVeth[pod.HostVeth] {
			if err := p.o.Kernel.DeleteLink(pod.HostVeth); err != nil {
				errs = append(errs, err)
			}
		}
		if err := withWriteLock(conf.SDWAN.Database, func() error { return db.DeletePod(ctx, pod.ContainerID, pod.IfName) }); err != nil {
			errs = append(errs, dbError(err))
		}
	}

	// Veths without a row (the row was lost, or ADD died before registering): ours are
	// the pt<hash> ones on our bridge.
	if br, err := p.o.Kernel.LinkByName(conf.Bridge); err == nil {
		veths, err := p.o.Kernel.HostVeths()
		if err != nil {
			errs = append(errs, err)
		}
		for _, v := range veths {
			if v.Master == br.Index && !keepVeth[v.Name] {
				if err := p.o.Kernel.DeleteLink(v.Name); err != nil {
					errs = append(errs, err)
				}
			}
		}
	} else if !errors.Is(err, link.ErrNotFound) {
		errs = append(errs, err)
	}

	am, err := newIPAM(conf, args.Args, p.o.ExecIPAM)
	if err != nil {
		return err
	}
	if err := am.GC(valid); err != nil {
		errs = append(errs, err)
	}
	return firstTyped(errs)
}
