package mesh

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// countingTransport wraps memberlist's network transport to count the gossip bytes this
// node sends (UDP packets and TCP push/pull streams), for the gossip-cost metric and the
// convergence benchmark. Counting in the transport avoids go-metrics' global sink.
type countingTransport struct {
	memberlist.NodeAwareTransport
	sent     *atomic.Uint64
	streamCh chan net.Conn
	done     chan struct{}
	once     sync.Once
}

func newCountingTransport(inner memberlist.NodeAwareTransport, sent *atomic.Uint64) *countingTransport {
	t := &countingTransport{NodeAwareTransport: inner, sent: sent, streamCh: make(chan net.Conn), done: make(chan struct{})}
	go func() {
		in := inner.StreamCh()
		for {
			select {
			case c := <-in:
				select {
				case t.streamCh <- &countingConn{Conn: c, sent: sent}:
				case <-t.done:
					c.Close()
					return
				}
			case <-t.done:
				return
			}
		}
	}()
	return t
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.sent.Add(uint64(len(b)))
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	t.sent.Add(uint64(len(b)))
	return t.NodeAwareTransport.WriteToAddress(b, addr)
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.NodeAwareTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, sent: t.sent}, nil
}

func (t *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.NodeAwareTransport.DialAddressTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, sent: t.sent}, nil
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown stops the inner transport first: its TCP listener may be blocked handing us a
// connection, so the forwarder must keep running until the listener has exited.
func (t *countingTransport) Shutdown() error {
	err := t.NodeAwareTransport.Shutdown()
	t.once.Do(func() { close(t.done) })
	return err
}

type countingConn struct {
	net.Conn
	sent *atomic.Uint64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(uint64(n))
	return n, err
}
