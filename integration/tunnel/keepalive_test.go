package tunneltest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/tunnel"
)

// Both gateways add each other at the same moment with the default persistent keepalive,
// as they do when they learn each other's announcements from one gossip round, and pod A
// pings pod B at once. Turning a peer's keepalive on makes WireGuard send at once, which
// starts a handshake; if both sides started one, the initiations would cross, each side
// would answer the other's and drop the answer to its own (wireguard-go keeps one
// handshake per peer), and no session would exist until WireGuard's 5 s retry (without
// the hold this failed in about one of three rounds here). The device lets only the side
// with the smaller public key start and holds the other's keepalive and allowed IPs until
// the handshake completed or wg.KeepaliveHold (2 s) passed, so the first ping passes in
// 1-3 s (a held side drops the pings that arrive before it releases), every round.
func TestSimultaneousPeerAddWithKeepalive(t *testing.T) {
	const rounds = 3
	for i := range rounds {
		a, b := newPair(t)
		ina := a.input(b.gateway(b.spec.PrivateKey.PublicKey()))
		inb := b.input(a.gateway(a.spec.PrivateKey.PublicKey()))
		ina.Keepalive, inb.Keepalive = tunnel.DefaultKeepalive, tunnel.DefaultKeepalive
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, x := range []struct {
			s  *side
			in tunnel.Input
		}{{a, ina}, {b, inb}} {
			wg.Go(func() {
				<-start
				if _, err := x.s.rec.Reconcile(x.in); err != nil {
					t.Error(err)
				}
			})
		}
		t0 := time.Now()
		close(start)
		wg.Wait()
		// The held side enables its keepalive on a later reconcile (the agent's loop
		// re-runs it while a peer is held).
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				a.rec.Reconcile(ina)
				b.rec.Reconcile(inb)
			}
		}()
		deadline := time.Now().Add(4500 * time.Millisecond)
		for {
			err := ping(a.podName, b.podIP, 0)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				close(stop)
				for _, s := range []*side{a, b} {
					if st, serr := s.dev.State(); serr == nil {
						t.Logf("%s device: public key %s, peers %+v", s.cluster, st.PublicKey, st.Peers)
					}
				}
				t.Fatalf("round %d: first ping not answered within 4.5 s of both peers added (crossed handshakes wait for WireGuard's 5 s retry): %v", i+1, err)
			}
		}
		close(stop)
		t.Logf("round %d: first ping answered %v after both gateways added each other", i+1, time.Since(t0).Round(time.Millisecond))
		// Both keepalives end up on.
		for _, s := range []*side{a, b} {
			eventually(t, 2*time.Second, s.cluster+" keepalive on", func() error {
				s.rec.Reconcile(map[*side]tunnel.Input{a: ina, b: inb}[s])
				st, err := s.dev.State()
				if err != nil {
					return err
				}
				if len(st.Peers) != 1 || st.Peers[0].PersistentKeepaliveInterval != tunnel.DefaultKeepalive {
					return errorf("peers %+v", st.Peers)
				}
				return nil
			})
		}
	}
}

func errorf(f string, a ...any) error { return fmt.Errorf(f, a...) }
