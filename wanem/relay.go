// Package wanem is a userspace WAN emulator: a UDP relay that sits in front of a UDP
// endpoint (a WireGuard peer, a probe responder) and adds one-way delay, jitter, random
// loss and blackholes, changeable at runtime. This kernel has no netem, so tests,
// benchmarks and the demo impair paths here instead.
//
// The relay forwards datagrams from clients to one target and the target's answers back
// to the client that spoke last (one peer at a time, like a tunnel endpoint behind a NAT).
// Impairments apply to each direction independently, so a delay of D adds 2·D to a round
// trip. Packets of one direction leave in the order they arrived: jitter never reorders.
package wanem

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Impairment is what the relay does to every datagram, in each direction.
type Impairment struct {
	// Delay is added to every datagram, one way.
	Delay time.Duration `json:"delay"`
	// Jitter is the half-width of a uniform random variation around Delay (never below 0).
	Jitter time.Duration `json:"jitter"`
	// LossPercent drops that share of datagrams at random (0..100).
	LossPercent float64 `json:"loss_percent"`
	// Blackhole drops everything.
	Blackhole bool `json:"blackhole"`
}

// Validate reports the first out-of-range field.
func (i Impairment) Validate() error {
	switch {
	case i.Delay < 0:
		return fmt.Errorf("delay %v: must not be negative", i.Delay)
	case i.Jitter < 0:
		return fmt.Errorf("jitter %v: must not be negative", i.Jitter)
	case i.LossPercent < 0 || i.LossPercent > 100:
		return fmt.Errorf("loss %v: must be within 0..100 (percent)", i.LossPercent)
	}
	return nil
}

// Options configures a Relay.
type Options struct {
	// Listen is the UDP address clients send to ("127.0.0.1:0" picks a port).
	Listen string
	// Target is the UDP address datagrams are forwarded to.
	Target string
	// Impairment is the initial impairment (zero: a plain relay).
	Impairment Impairment
	// QueueLen bounds the datagrams waiting for their delay, per direction (default 4096);
	// more are dropped and counted as overflow.
	QueueLen int
	Logger   *slog.Logger
}

// Stats counts datagrams per direction (to the target = "forward").
type Stats struct {
	ForwardIn        uint64 `json:"forward_in"`
	ForwardOut       uint64 `json:"forward_out"`
	ReverseIn        uint64 `json:"reverse_in"`
	ReverseOut       uint64 `json:"reverse_out"`
	DroppedLoss      uint64 `json:"dropped_loss"`
	DroppedBlackhole uint64 `json:"dropped_blackhole"`
	DroppedOverflow  uint64 `json:"dropped_overflow"`
}

type packet struct {
	data   []byte
	sendAt time.Time
	to     netip.AddrPort // reverse direction: the client
}

// direction is one FIFO of delayed datagrams and the time its last one leaves, which
// later ones never precede (that is what keeps the order under jitter).
type direction struct {
	q    chan packet
	mu   sync.Mutex
	last time.Time
}

// Relay is a running impairment relay. Its sockets are created by New, so a caller can
// make it inside a network namespace and run it from any goroutine.
type Relay struct {
	log      *slog.Logger
	listen   *net.UDPConn
	upstream *net.UDPConn
	target   netip.AddrPort

	mu     sync.Mutex
	imp    Impairment
	rng    *rand.Rand
	client netip.AddrPort

	fwd, rev direction

	forwardIn, forwardOut, reverseIn, reverseOut atomic.Uint64
	dropLoss, dropBlackhole, dropOverflow        atomic.Uint64
}

// New binds the listening socket and the upstream socket.
func New(opts Options) (*Relay, error) {
	if err := opts.Impairment.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.QueueLen <= 0 {
		opts.QueueLen = 4096
	}
	target, err := net.ResolveUDPAddr("udp", opts.Target)
	if err != nil {
		return nil, fmt.Errorf("wanem: target %q: %w", opts.Target, err)
	}
	laddr, err := net.ResolveUDPAddr("udp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("wanem: listen %q: %w", opts.Listen, err)
	}
	l, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("wanem: listen %s: %w", opts.Listen, err)
	}
	// An unconnected upstream socket on an ephemeral port: answers from the target come
	// back here, whoever the client is.
	network := "udp4"
	if target.IP.To4() == nil {
		network = "udp6"
	}
	up, err := net.ListenUDP(network, nil)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("wanem: upstream socket: %w", err)
	}
	r := &Relay{
		log:      opts.Logger,
		listen:   l,
		upstream: up,
		target:   target.AddrPort(),
		imp:      opts.Impairment,
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		fwd:      direction{q: make(chan packet, opts.QueueLen)},
		rev:      direction{q: make(chan packet, opts.QueueLen)},
	}
	return r, nil
}

// Addr is the listening address.
func (r *Relay) Addr() netip.AddrPort { return r.listen.LocalAddr().(*net.UDPAddr).AddrPort() }

// Set replaces the impairment; datagrams already queued keep their departure time.
func (r *Relay) Set(i Impairment) error {
	if err := i.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	prev := r.imp
	r.imp = i
	r.mu.Unlock()
	r.log.Info("impairment changed", "from", prev, "to", i)
	return nil
}

// Impairment returns the current impairment.
func (r *Relay) Impairment() Impairment {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.imp
}

// Stats returns the counters.
func (r *Relay) Stats() Stats {
	return Stats{
		ForwardIn: r.forwardIn.Load(), ForwardOut: r.forwardOut.Load(),
		ReverseIn: r.reverseIn.Load(), ReverseOut: r.reverseOut.Load(),
		DroppedLoss: r.dropLoss.Load(), DroppedBlackhole: r.dropBlackhole.Load(),
		DroppedOverflow: r.dropOverflow.Load(),
	}
}

// Run relays until ctx ends, then closes the sockets.
func (r *Relay) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(4)
	go func() { defer wg.Done(); errc <- r.readLoop(ctx, r.listen, true) }()
	go func() { defer wg.Done(); errc <- r.readLoop(ctx, r.upstream, false) }()
	go func() { defer wg.Done(); r.sendLoop(ctx, &r.fwd, true) }()
	go func() { defer wg.Done(); r.sendLoop(ctx, &r.rev, false) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	r.listen.Close()
	r.upstream.Close()
	wg.Wait()
	return err
}

// admit decides the fate of one datagram: dropped (false) or its departure time.
func (r *Relay) admit(d *direction, now time.Time) (time.Time, bool) {
	r.mu.Lock()
	imp := r.imp
	var lossDraw, jitterDraw float64
	if imp.LossPercent > 0 {
		lossDraw = r.rng.Float64() * 100
	}
	if imp.Jitter > 0 {
		jitterDraw = r.rng.Float64()*2 - 1
	}
	r.mu.Unlock()
	if imp.Blackhole {
		r.dropBlackhole.Add(1)
		return time.Time{}, false
	}
	if imp.LossPercent > 0 && lossDraw < imp.LossPercent {
		r.dropLoss.Add(1)
		return time.Time{}, false
	}
	delay := imp.Delay + time.Duration(jitterDraw*float64(imp.Jitter))
	if delay < 0 {
		delay = 0
	}
	at := now.Add(delay)
	d.mu.Lock()
	if at.Before(d.last) {
		at = d.last
	}
	d.last = at
	d.mu.Unlock()
	return at, true
}

func (r *Relay) readLoop(ctx context.Context, c *net.UDPConn, forward bool) error {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("wanem: read: %w", err)
		}
		now := time.Now()
		d := &r.rev
		var to netip.AddrPort
		if forward {
			r.forwardIn.Add(1)
			d = &r.fwd
			r.mu.Lock()
			r.client = from
			r.mu.Unlock()
		} else {
			r.reverseIn.Add(1)
			if from.Addr().Unmap() != r.target.Addr().Unmap() || from.Port() != r.target.Port() {
				continue // only the target may answer through the relay
			}
			r.mu.Lock()
			to = r.client
			r.mu.Unlock()
			if !to.IsValid() {
				continue
			}
		}
		at, ok := r.admit(d, now)
		if !ok {
			continue
		}
		p := packet{data: append([]byte(nil), buf[:n]...), sendAt: at, to: to}
		select {
		case d.q <- p:
		default:
			r.dropOverflow.Add(1)
		}
	}
}

func (r *Relay) sendLoop(ctx context.Context, d *direction, forward bool) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p packet
		select {
		case <-ctx.Done():
			return
		case p = <-d.q:
		}
		if wait := time.Until(p.sendAt); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		var err error
		if forward {
			_, err = r.upstream.WriteToUDPAddrPort(p.data, r.target)
			if err == nil {
				r.forwardOut.Add(1)
			}
		} else {
			_, err = r.listen.WriteToUDPAddrPort(p.data, p.to)
			if err == nil {
				r.reverseOut.Add(1)
			}
		}
		if err != nil && ctx.Err() == nil {
			// A send error (no route, ICMP unreachable) is the emulated network's
			// business: count nothing, keep relaying.
			r.log.Debug("send failed", "forward", forward, "err", err)
		}
	}
}
