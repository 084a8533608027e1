package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/paths"
)

// Path is one path to probe: the paths.PathSpec (Remote = the responder's host:port) and
// how to leave this node on it.
type Path struct {
	paths.PathSpec
	// LocalAddr is the source address to bind (optional): it picks the uplink through
	// source-based routing.
	LocalAddr string
	// Device binds the socket to an interface (SO_BINDTODEVICE, optional).
	Device string
	// Mark is the socket's packet mark (SO_MARK, 0 = none): steering gives probes their
	// own traffic class with it (steer.ProbeMark).
	Mark uint32
}

// Options configures a Prober.
type Options struct {
	Paths []Path
	// Config holds the interval (probe-interval), the miss threshold and the selection
	// knobs; zero fields take paths' defaults.
	Config paths.Config
	// Requirements adds selections beyond the plain classes (pods with max-latency-ms).
	Requirements []paths.Requirement
	// OnChange is called (from the prober's goroutine) for every selection that moved;
	// the agent steers traffic from here.
	OnChange func(paths.Change)
	// AfterTick is called (from the prober's goroutine) after every evaluation of the
	// selections, following the OnChange calls: steering re-reads the monitor here, so a
	// path going down moves its connections even when no selection changed.
	AfterTick func(now time.Time)
	// LocalCluster labels patronus_pod_latency_ms (src_cluster); without it that metric
	// is not exported.
	LocalCluster string
	Registerer   prometheus.Registerer
	Logger       *slog.Logger
}

type pathConn struct {
	Path
	conn    *net.UDPConn
	session uint64
}

// Prober sends probes on every path and keeps the paths.Monitor current.
type Prober struct {
	opts    Options
	log     *slog.Logger
	mon     *paths.Monitor
	conns   []*pathConn
	epoch   time.Time
	changes *prometheus.CounterVec
}

// New opens one UDP socket per path (in the calling thread's network namespace) and
// registers the metrics.
func New(opts Options) (*Prober, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	p := &Prober{opts: opts, log: opts.Logger, mon: paths.NewMonitor(cfg), epoch: time.Now()}
	specs := make([]paths.PathSpec, 0, len(opts.Paths))
	for _, pa := range opts.Paths {
		specs = append(specs, pa.PathSpec)
	}
	if err := p.mon.SetPaths(specs, time.Now()); err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	p.mon.SetRequirements(opts.Requirements)
	ok := false
	defer func() {
		if !ok {
			p.close()
		}
	}()
	for _, pa := range opts.Paths {
		c, err := dial(pa)
		if err != nil {
			return nil, fmt.Errorf("probe: path %s: %w", pa.ID, err)
		}
		var s [8]byte
		_, _ = rand.Read(s[:])
		p.conns = append(p.conns, &pathConn{Path: pa, conn: c, session: binary.BigEndian.Uint64(s[:])})
	}
	if opts.Registerer != nil {
		p.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "patronus_path_selection_changes_total",
			Help: "Moves of a QoS class's selected path, by destination, class and reason."}, []string{"dst", "class", "reason"})
		for _, c := range []prometheus.Collector{newCollector(p.mon, opts.LocalCluster), p.changes} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("probe: metrics: %w", err)
			}
		}
	}
	ok = true
	return p, nil
}

func dial(pa Path) (*net.UDPConn, error) {
	d := net.Dialer{}
	if pa.LocalAddr != "" {
		ip := net.ParseIP(pa.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("local address %q is not an IP", pa.LocalAddr)
		}
		d.LocalAddr = &net.UDPAddr{IP: ip}
	}
	if pa.Device != "" || pa.Mark != 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if pa.Device != "" {
					serr = unix.BindToDevice(int(fd), pa.Device)
				}
				if pa.Mark != 0 && serr == nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(pa.Mark))
				}
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial("udp", pa.Remote)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// Monitor is the live monitor (safe for concurrent use).
func (p *Prober) Monitor() *paths.Monitor { return p.mon }

func (p *Prober) close() {
	for _, c := range p.conns {
		c.conn.Close()
	}
}

// Run probes until ctx ends, then closes the sockets.
func (p *Prober) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := p.mon.Config()
	var wg sync.WaitGroup
	for _, c := range p.conns {
		wg.Add(2)
		go func() { defer wg.Done(); p.send(ctx, c, cfg.Interval) }()
		go func() { defer wg.Done(); p.receive(ctx, c) }()
	}
	// Ticks are finer than the interval so a loss is noticed soon after its timeout.
	tick := max(cfg.Interval/5, time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.close()
			wg.Wait()
			return nil
		case now := <-t.C:
			for _, ch := range p.mon.Tick(now) {
				p.log.Info("path selection changed", "dst", ch.Dst, "class", ch.Class, "max_latency", ch.MaxLatency,
					"from", ch.From, "to", ch.To, "reason", ch.Reason)
				if p.changes != nil {
					p.changes.WithLabelValues(ch.Dst, string(ch.Class), ch.Reason).Inc()
				}
				if p.opts.OnChange != nil {
					p.opts.OnChange(ch)
				}
			}
			if p.opts.AfterTick != nil {
				p.opts.AfterTick(now)
			}
		}
	}
}

func (p *Prober) send(ctx context.Context, c *pathConn, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	buf := make([]byte, 0, packetLen)
	var seq uint64
	for {
		seq++
		now := time.Now()
		buf = packet{kind: kindRequest, session: c.session, seq: seq, ts: int64(now.Sub(p.epoch))}.marshal(buf)
		// Recorded before the write, so a fast answer always finds its probe pending.
		p.mon.Sent(c.ID, seq, now)
		if _, err := c.conn.Write(buf); err != nil && ctx.Err() == nil {
			// No route or a refused port: the probe is simply lost.
			p.log.Debug("probe send failed", "path", c.ID, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Prober) receive(ctx context.Context, c *pathConn) {
	buf := make([]byte, 2048)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP port unreachable surfaces here on a connected socket: keep reading.
			continue
		}
		now := time.Now()
		pk, err := unmarshal(buf[:n])
		if err != nil || pk.kind != kindReply || pk.session != c.session {
			continue
		}
		p.mon.Reply(c.ID, pk.seq, now)
	}
}
