package wanem

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// echo starts a UDP echo server on loopback and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c.LocalAddr().String()
}

func startRelay(t *testing.T, imp Impairment) *Relay {
	t.Helper()
	r, err := New(Options{Listen: "127.0.0.1:0", Target: echo(t), Impairment: imp})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

func dial(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rtt sends one datagram and returns the round trip, or false after timeout.
func rtt(t *testing.T, c *net.UDPConn, payload string, timeout time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return 0, false
		}
		if string(buf[:n]) == payload {
			return time.Since(start), true
		}
	}
}

func TestRelayDelay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		imp      Impairment
		min, max time.Duration
	}{
		// The delay applies each way: a round trip takes at least 2·Delay. The upper
		// bounds are generous so a loaded CI machine does not fail the test.
		{"plain", Impairment{}, 0, 200 * time.Millisecond},
		{"20ms", Impairment{Delay: 20 * time.Millisecond}, 40 * time.Millisecond, 400 * time.Millisecond},
		{"30ms±5ms", Impairment{Delay: 30 * time.Millisecond, Jitter: 5 * time.Millisecond}, 50 * time.Millisecond, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, tc.imp)
			c := dial(t, r.Addr())
			for i := range 5 {
				d, ok := rtt(t, c, "ping"+string(rune('a'+i)), 2*time.Second)
				if !ok {
					t.Fatalf("probe %d: no answer", i)
				}
				if d < tc.min || d > tc.max {
					t.Errorf("probe %d: rtt %v, want within [%v, %v]", i, d, tc.min, tc.max)
				}
			}
		})
	}
}

func TestRelayBlackholeAndRecovery(t *testing.T) {
	r := startRelay(t, Impairment{})
	c := dial(t, r.Addr())
	if _, ok := rtt(t, c, "before", 2*time.Second); !ok {
		t.Fatal("no answer before the blackhole")
	}
	if err := r.Set(Impairment{Blackhole: true}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if d, ok := rtt(t, c, "during"+string(rune('0'+i)), 200*time.Millisecond); ok {
			t.Fatalf("answer through a blackhole after %v", d)
		}
	}
	if s := r.Stats(); s.DroppedBlackhole < 3 {
		t.Errorf("stats %+v: want ≥3 blackhole drops", s)
	}
	if err := r.Set(Impairment{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rtt(t, c, "after", 2*time.Second); !ok {
		t.Fatal("no answer after the blackhole was lifted")
	}
}

func TestRelayLossAndOrder(t *testing.T) {
	// 30% loss each way: about half the round trips survive (0.7² = 0.49). Jitter is larger
	// than the spacing of the datagrams, so only the FIFO keeps them in order.
	r := startRelay(t, Impairment{Delay: 5 * time.Millisecond, Jitter: 4 * time.Millisecond, LossPercent: 30})
	c := dial(t, r.Addr())
	const n = 400
	go func() {
		for i := range n {
			_, _ = c.Write([]byte{byte(i >> 8), byte(i)})
			time.Sleep(200 * time.Microsecond)
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 16)
	got, last := 0, -1
	for {
		k, err := c.Read(buf)
		if err != nil {
			break
		}
		seq := int(buf[0])<<8 | int(buf[1])
		if k != 2 || seq <= last {
			t.Fatalf("datagram %d after %d: reordered or corrupted", seq, last)
		}
		last = seq
		got++
	}
	if got < n*30/100 || got > n*70/100 {
		t.Errorf("%d of %d round trips survived 30%% loss each way, want about 49%%", got, n)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		imp Impairment
		ok  bool
	}{
		{Impairment{}, true},
		{Impairment{Delay: time.Second, Jitter: time.Millisecond, LossPercent: 100}, true},
		{Impairment{Delay: -1}, false},
		{Impairment{Jitter: -1}, false},
		{Impairment{LossPercent: 101}, false},
		{Impairment{LossPercent: -0.5}, false},
	} {
		if err := tc.imp.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err %v, want ok=%v", tc.imp, err, tc.ok)
		}
	}
}

func TestControlAPI(t *testing.T) {
	r := startRelay(t, Impairment{})
	sock := filepath.Join(t.TempDir(), "wanem.sock")
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = ServeControl(ctx, l, r) }()
	c := NewClient(sock)
	d, bh := 20*time.Millisecond, true
	got, err := c.Set(ctx, Change{Delay: &d, Blackhole: &bh})
	if err != nil {
		t.Fatal(err)
	}
	want := Impairment{Delay: d, Blackhole: true}
	if got != want || r.Impairment() != want {
		t.Fatalf("after set: client %+v relay %+v, want %+v", got, r.Impairment(), want)
	}
	// A partial change keeps the other fields.
	loss := 1.5
	if got, err = c.Set(ctx, Change{LossPercent: &loss}); err != nil || got != (Impairment{Delay: d, Blackhole: true, LossPercent: 1.5}) {
		t.Fatalf("partial set: %+v, %v", got, err)
	}
	bad := 150.0
	if _, err := c.Set(ctx, Change{LossPercent: &bad}); err == nil {
		t.Fatal("loss 150% accepted")
	}
	if g, err := c.Get(ctx); err != nil || g != r.Impairment() {
		t.Fatalf("get: %+v, %v", g, err)
	}
	if _, err := c.Stats(ctx); err != nil {
		t.Fatal(err)
	}
}
