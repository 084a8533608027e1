package mesh

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

type testBroadcast []byte

func (b testBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b testBroadcast) Message() []byte                       { return b }
func (b testBroadcast) Finished()                             {}

// In a small mesh one broadcast (a member alive again after a partition, a user event)
// can go to every other node: memberlist's gossip takes a node's pending broadcasts once
// per target, so the queue must hand each out at least N-1 times (the local preset's
// multiplier gave 2 in a 4-node mesh: TestEdgePartition's slow heals). The local profile
// keeps its fast timings.
func TestProfileBroadcastReachesSmallMesh(t *testing.T) {
	for _, tc := range []struct {
		profile string
		nodes   int
	}{
		{"lan", 3}, {"lan", 4}, {"lan", 5},
		{"local", 3}, {"local", 4}, {"local", 5},
	} {
		ml := memberlistConfig(tc.profile)
		q := &memberlist.TransmitLimitedQueue{NumNodes: func() int { return tc.nodes }, RetransmitMult: ml.RetransmitMult}
		q.QueueBroadcast(testBroadcast("alive"))
		sends := 0
		for len(q.GetBroadcasts(2, 1400)) > 0 {
			sends++
		}
		if sends < tc.nodes-1 {
			t.Errorf("%s profile, %d nodes: a broadcast is sent %d times, fewer than the %d other nodes", tc.profile, tc.nodes, sends, tc.nodes-1)
		}
	}
	if local := memberlistConfig("local"); local.ProbeInterval != time.Second || local.GossipInterval != 100*time.Millisecond || local.PushPullInterval != 15*time.Second {
		t.Errorf("local profile timings changed: probe %s gossip %s push-pull %s", local.ProbeInterval, local.GossipInterval, local.PushPullInterval)
	}
}
