package beacon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/mesh/trust"
)

// DefaultGroup is the contract's beacon group and port.
var DefaultGroup = netip.MustParseAddrPort("239.255.77.77:7947")

// Options configures a Beaconer.
type Options struct {
	Identity trust.Identity
	Verifier *trust.Verifier
	// Gossip returns the address to announce (called for every beacon, so it can follow
	// the Serf node's advertise address).
	Gossip func() string
	// Group is the multicast group and port (DefaultGroup if zero).
	Group netip.AddrPort
	// Interfaces to beacon on; empty means every up, multicast-capable, non-loopback
	// interface, re-evaluated every interval so links that appear later are used.
	Interfaces []string
	// TTL of beacons (1 if zero: they stay on the link).
	TTL int
	// Interval between beacons (5s if zero).
	Interval time.Duration
	// OnPeer is called for every valid beacon of another node, with the packet's source.
	OnPeer func(b Beacon, src netip.Addr)
	// Registerer gets the counters; nil keeps them unexported.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Beaconer sends and receives beacons.
type Beaconer struct {
	o        Options
	ignored  *prometheus.CounterVec
	received prometheus.Counter

	mu     sync.Mutex
	joined map[int]bool // interface index -> group joined
	logged map[Reason]bool
}

// New validates o and registers the counters.
func New(o Options) (*Beaconer, error) {
	if o.Verifier == nil || o.Identity.Key == nil || o.Gossip == nil {
		return nil, errors.New("beacon: identity, verifier and gossip address are required")
	}
	if !o.Group.IsValid() {
		o.Group = DefaultGroup
	}
	if !o.Group.Addr().Is4() || !o.Group.Addr().IsMulticast() {
		return nil, fmt.Errorf("beacon: group %s is not an IPv4 multicast address", o.Group)
	}
	if o.TTL == 0 {
		o.TTL = 1
	}
	if o.Interval == 0 {
		o.Interval = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Beaconer{o: o, joined: map[int]bool{}, logged: map[Reason]bool{}}
	b.ignored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "patronus_mesh_beacons_ignored_total",
		Help: "Multicast beacons ignored (unsigned, untrusted, bad signature, stale), by reason.",
	}, []string{"reason"})
	b.received = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "patronus_mesh_beacons_received_total",
		Help: "Valid multicast beacons received from other nodes.",
	})
	for _, r := range Reasons {
		b.ignored.WithLabelValues(string(r))
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{b.ignored, b.received} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("beacon: register metrics: %w", err)
			}
		}
	}
	return b, nil
}

// Ignored is the count of beacons ignored for reason.
func (b *Beaconer) Ignored(reason Reason) float64 {
	var m dto.Metric
	_ = b.ignored.WithLabelValues(string(reason)).Write(&m)
	return m.GetCounter().GetValue()
}

// Run sends beacons every interval and handles received ones until ctx ends.
func (b *Beaconer) Run(ctx context.Context) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		// Several agents on one host (tests, edge boxes) share the beacon port.
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		if err != nil {
			return err
		}
		return serr
	}}
	// Bound to the group address, the socket sees only beacons, not unicast to the port.
	c, err := lc.ListenPacket(ctx, "udp4", b.o.Group.String())
	if err != nil {
		return fmt.Errorf("beacon: listen on %s: %w", b.o.Group, err)
	}
	defer c.Close()
	p := ipv4.NewPacketConn(c)
	if err := p.SetMulticastTTL(b.o.TTL); err != nil {
		return fmt.Errorf("beacon: set multicast TTL: %w", err)
	}
	// Loopback on: other agents on this host (tests, edge boxes) hear us; our own beacons
	// are recognised by name and dropped.
	if err := p.SetMulticastLoopback(true); err != nil {
		return fmt.Errorf("beacon: set multicast loopback: %w", err)
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.receive(p)
	}()
	t := time.NewTicker(b.o.Interval)
	defer t.Stop()
	for {
		b.send(p)
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-t.C:
		}
	}
}

func (b *Beaconer) interfaces() []net.Interface {
	var out []net.Interface
	if len(b.o.Interfaces) > 0 {
		for _, name := range b.o.Interfaces {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				b.o.Logger.Debug("beacon interface not present", "interface", name, "err", err)
				continue
			}
			out = append(out, *ifi)
		}
		return out
	}
	all, _ := net.Interfaces()
	for _, ifi := range all {
		if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagMulticast != 0 && ifi.Flags&net.FlagLoopback == 0 {
			out = append(out, ifi)
		}
	}
	return out
}

func (b *Beaconer) send(p *ipv4.PacketConn) {
	wire, err := Seal(Beacon{Cluster: b.o.Identity.Cert.Cluster, Node: b.o.Identity.Cert.Node,
		Gossip: b.o.Gossip(), Time: time.Now().UnixMilli()}, b.o.Identity)
	if err != nil {
		b.o.Logger.Error("seal beacon", "err", err)
		return
	}
	dst := net.UDPAddrFromAddrPort(b.o.Group)
	for _, ifi := range b.interfaces() {
		b.mu.Lock()
		if !b.joined[ifi.Index] {
			if err := p.JoinGroup(&ifi, &net.UDPAddr{IP: dst.IP}); err != nil {
				b.o.Logger.Debug("join multicast group", "interface", ifi.Name, "err", err)
			} else {
				b.joined[ifi.Index] = true
				b.o.Logger.Info("beaconing", "interface", ifi.Name, "group", b.o.Group.String())
			}
		}
		b.mu.Unlock()
		if err := p.SetMulticastInterface(&ifi); err != nil {
			continue
		}
		if _, err := p.WriteTo(wire, nil, dst); err != nil {
			b.o.Logger.Debug("send beacon", "interface", ifi.Name, "err", err)
		}
	}
}

func (b *Beaconer) receive(p *ipv4.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, _, src, err := p.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		bc, err := Open(buf[:n], b.o.Verifier, time.Now())
		if err != nil {
			reason := ReasonOf(err)
			b.ignored.WithLabelValues(string(reason)).Inc()
			b.mu.Lock()
			first := !b.logged[reason]
			b.logged[reason] = true
			b.mu.Unlock()
			if first {
				b.o.Logger.Warn("beacon ignored (logged once per reason; see patronus_mesh_beacons_ignored_total)", "from", src, "reason", reason, "err", err)
			}
			continue
		}
		if bc.Cluster == b.o.Identity.Cert.Cluster && bc.Node == b.o.Identity.Cert.Node {
			continue // our own, looped back
		}
		b.received.Inc()
		var srcAddr netip.Addr
		if ua, ok := src.(*net.UDPAddr); ok {
			srcAddr, _ = netip.AddrFromSlice(ua.IP)
			srcAddr = srcAddr.Unmap()
		}
		if b.o.OnPeer != nil {
			b.o.OnPeer(bc, srcAddr)
		}
	}
}

// ResolveGossip returns the address to join for a beacon: its gossip address, with the
// packet source substituted when the beacon's host is empty or unspecified.
func ResolveGossip(bc Beacon, src netip.Addr) (string, error) {
	host, port, err := net.SplitHostPort(bc.Gossip)
	if err != nil {
		return "", fmt.Errorf("beacon: gossip address %q: %w", bc.Gossip, err)
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		if !src.IsValid() {
			return "", errors.New("beacon: no address to join")
		}
		host = src.String()
	}
	return net.JoinHostPort(host, port), nil
}
