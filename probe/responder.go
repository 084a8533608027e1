package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// Responder answers probe echo requests on one UDP socket.
type Responder struct {
	conn     *net.UDPConn
	answered atomic.Uint64
	ignored  atomic.Uint64
}

// NewResponder binds addr (e.g. ":7948"). The socket belongs to the calling thread's
// network namespace.
func NewResponder(addr string) (*Responder, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("probe responder %q: %w", addr, err)
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("probe responder: %w", err)
	}
	return &Responder{conn: c}, nil
}

// Addr is the bound address.
func (r *Responder) Addr() *net.UDPAddr { return r.conn.LocalAddr().(*net.UDPAddr) }

// Answered and Ignored count requests answered and datagrams that were not requests.
func (r *Responder) Answered() uint64 { return r.answered.Load() }
func (r *Responder) Ignored() uint64  { return r.ignored.Load() }

// Run answers until ctx ends, then closes the socket.
func (r *Responder) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { r.conn.Close() })
	defer stop()
	buf := make([]byte, 2048)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("probe responder: %w", err)
		}
		p, err := unmarshal(buf[:n])
		if err != nil || p.kind != kindRequest {
			r.ignored.Add(1)
			continue
		}
		buf[5] = kindReply
		if _, err := r.conn.WriteToUDPAddrPort(buf[:n], from); err == nil {
			r.answered.Add(1)
		}
	}
}
