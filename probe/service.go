package probe

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/paths"
)

// ServiceOptions configures everything path selection runs on a gateway node.
type ServiceOptions struct {
	Prober Options
	// ResponderAddr is where this node answers probes ("" = ":7948", "off" = none).
	ResponderAddr string
	// MetricsSocket is the L7 metrics socket ("" = DefaultMetricsSocket, "off" = none).
	MetricsSocket string
	Logger        *slog.Logger
}

// Service bundles the prober, the responder and the L7 metrics socket: what the agent
// runs, and what `patronus paths run` runs without an agent.
type Service struct {
	log    *slog.Logger
	prober *Prober
	resp   *Responder
	l7     net.Listener
}

// NewService binds every socket (in the calling thread's network namespace).
func NewService(o ServiceOptions) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Prober.Logger == nil {
		o.Prober.Logger = o.Logger
	}
	s := &Service{log: o.Logger}
	var err error
	if s.prober, err = New(o.Prober); err != nil {
		return nil, err
	}
	if o.ResponderAddr != "off" {
		addr := o.ResponderAddr
		if addr == "" {
			addr = ":" + strconv.Itoa(DefaultPort)
		}
		if s.resp, err = NewResponder(addr); err != nil {
			s.prober.close()
			return nil, err
		}
	}
	if o.MetricsSocket != "off" {
		sock := o.MetricsSocket
		if sock == "" {
			sock = DefaultMetricsSocket
		}
		if s.l7, err = ListenL7(sock); err != nil {
			s.prober.close()
			if s.resp != nil {
				s.resp.conn.Close()
			}
			return nil, err
		}
	}
	return s, nil
}

// Monitor is the live monitor.
func (s *Service) Monitor() *paths.Monitor { return s.prober.Monitor() }

// Handler serves GET /v1/paths (mount it at PathsAPIPath).
func (s *Service) Handler() http.Handler { return Handler(s.prober.Monitor()) }

// ResponderAddr is the responder's bound address (nil when off).
func (s *Service) ResponderAddr() *net.UDPAddr {
	if s.resp == nil {
		return nil
	}
	return s.resp.Addr()
}

// Run runs everything until ctx ends; the first failure stops the rest.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		once sync.Once
		ferr error
	)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				once.Do(func() { ferr = fmt.Errorf("%s: %w", name, err) })
				cancel()
			}
		}()
	}
	run("prober", s.prober.Run)
	if s.resp != nil {
		run("responder", s.resp.Run)
	}
	if s.l7 != nil {
		run("metrics socket", func(ctx context.Context) error { return ServeL7(ctx, s.l7, s.prober.Monitor(), s.log) })
	}
	wg.Wait()
	return ferr
}

// PathsFromConfig lists the paths to every configured remote cluster: its WireGuard
// endpoint's host and every extra `paths` entry's host, each probed on port (0 =
// DefaultPort). Ids are "<cluster>/<host>"; the source is left to routing ("" src label
// "default"). Bandwidth comes from the ConfigMap's path-bandwidth (config.Config.PathBandwidth): the caller sets it.
func PathsFromConfig(remotes []config.RemoteCluster, port int) ([]Path, error) {
	if port == 0 {
		port = DefaultPort
	}
	var out []Path
	for _, r := range remotes {
		seen := map[string]bool{}
		for _, ep := range append([]string{r.Endpoint}, r.Paths...) {
			if ep == "" {
				continue
			}
			host, _, err := net.SplitHostPort(ep)
			if err != nil {
				return nil, fmt.Errorf("remote cluster %s: endpoint %q: %w", r.ID, ep, err)
			}
			if seen[host] {
				continue
			}
			seen[host] = true
			out = append(out, Path{PathSpec: paths.PathSpec{ID: r.ID + "/" + host, Src: "default", Dst: r.ID,
				Remote: net.JoinHostPort(host, strconv.Itoa(port))}})
		}
	}
	return out, nil
}
