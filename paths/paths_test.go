package paths

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const ms1 = time.Millisecond

func TestTrackerRTT(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rtts       []time.Duration
		srtt, rvar time.Duration
		jitter     time.Duration
	}{
		// RFC 6298: first sample S → SRTT S, RTTVAR S/2.
		{"first", []time.Duration{40 * ms1}, 40 * ms1, 20 * ms1, 0},
		// Then RTTVAR = 3/4·20 + 1/4·|40−80| = 25; SRTT = 7/8·40 + 1/8·80 = 45.
		{"second", []time.Duration{40 * ms1, 80 * ms1}, 45 * ms1, 25 * ms1, 40 * ms1},
		// Steady: variation decays, jitter of a constant RTT stays 0.
		{"steady", repeat(10*ms1, 50), 10 * ms1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(Config{}, t0)
			now := t0
			for i, r := range tc.rtts {
				tr.Sent(uint64(i), now)
				if !tr.Reply(uint64(i), now.Add(r)) {
					t.Fatal("reply not matched")
				}
				now = now.Add(50 * ms1)
			}
			st := tr.Stats()
			if absDur(st.SRTT-tc.srtt) > 100*time.Microsecond || absDur(st.RTTVar-tc.rvar) > 100*time.Microsecond ||
				absDur(st.Jitter-tc.jitter) > 100*time.Microsecond {
				t.Errorf("srtt %v rttvar %v jitter %v, want %v %v %v", st.SRTT, st.RTTVar, st.Jitter, tc.srtt, tc.rvar, tc.jitter)
			}
			if st.State != StateUp || st.Loss != 0 {
				t.Errorf("state %s loss %v", st.State, st.Loss)
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// drive sends one probe per interval from start for n probes; answered(i) says whether
// probe i is answered and after what RTT. It ticks every millisecond and returns the time
// the tracker went down (zero if it did not).
func drive(tr *Tracker, start time.Time, interval time.Duration, n int, answered func(i int) (time.Duration, bool)) time.Time {
	type ev struct {
		seq uint64
		at  time.Time
	}
	var replies []ev
	end := start.Add(time.Duration(n)*interval + 2*time.Second)
	next := 0
	var down time.Time
	for now := start; now.Before(end); now = now.Add(ms1) {
		if next < n && !now.Before(start.Add(time.Duration(next)*interval)) {
			tr.Sent(uint64(next), now)
			if rtt, ok := answered(next); ok {
				replies = append(replies, ev{uint64(next), now.Add(rtt)})
			}
			next++
		}
		rest := replies[:0]
		for _, r := range replies {
			if !r.at.After(now) {
				tr.Reply(r.seq, now)
			} else {
				rest = append(rest, r)
			}
		}
		replies = rest
		before := tr.Stats().State
		tr.Expire(now)
		if before != StateDown && tr.Stats().State == StateDown && down.IsZero() {
			down = now
		}
	}
	return down
}

func TestTrackerDownAfterMisses(t *testing.T) {
	for _, tc := range []struct {
		name      string
		downAfter int
		cutAt     int // probes from this one on are lost
		wantDown  bool
		maxDetect time.Duration // after the first lost probe was sent
	}{
		// Detection = (misses−1)·interval for the later probes + the timeout of the last
		// one (SRTT 10ms + 4·RTTVAR, floored at 20ms).
		{"3 misses", 3, 20, true, 2*50*ms1 + 30*ms1},
		{"5 misses", 5, 20, true, 4*50*ms1 + 30*ms1},
		{"no loss", 3, 1000, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(Config{DownAfter: tc.downAfter}, t0)
			down := drive(tr, t0, 50*ms1, 40, func(i int) (time.Duration, bool) { return 10 * ms1, i < tc.cutAt })
			if down.IsZero() != !tc.wantDown {
				t.Fatalf("down at %v, want down=%v", down, tc.wantDown)
			}
			if !tc.wantDown {
				return
			}
			firstLost := t0.Add(time.Duration(tc.cutAt) * 50 * ms1)
			floor := time.Duration(tc.downAfter-1) * 50 * ms1
			if d := down.Sub(firstLost); d < floor || d > tc.maxDetect {
				t.Errorf("detected %v after the first lost probe, want within [%v, %v]", d, floor, tc.maxDetect)
			}
			if st := tr.Stats(); st.ConsecutiveLost < tc.downAfter || st.Lost != uint64(40-tc.cutAt) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestTrackerLossWindowAndRecovery(t *testing.T) {
	tr := NewTracker(Config{LossWindow: 10}, t0)
	// Every other probe lost: loss 50%, never DownAfter (3) in a row, so up.
	drive(tr, t0, 50*ms1, 20, func(i int) (time.Duration, bool) { return 5 * ms1, i%2 == 0 })
	if st := tr.Stats(); st.State != StateUp || st.Loss != 0.5 {
		t.Fatalf("alternate loss: state %s loss %v", st.State, st.Loss)
	}
	// Ten answered probes push the losses out of the window.
	start := t0.Add(10 * time.Second)
	drive(tr, start, 50*ms1, 10, func(int) (time.Duration, bool) { return 5 * ms1, true })
	if st := tr.Stats(); st.Loss != 0 {
		t.Fatalf("loss %v after a clean window", st.Loss)
	}
	// Down, then one answer brings it back up with Since = that answer.
	tr2 := NewTracker(Config{}, t0)
	drive(tr2, t0, 50*ms1, 10, func(i int) (time.Duration, bool) { return 5 * ms1, i < 3 })
	if tr2.Stats().State != StateDown {
		t.Fatal("not down")
	}
	back := t0.Add(time.Minute)
	tr2.Sent(100, back)
	tr2.Reply(100, back.Add(5*ms1))
	if st := tr2.Stats(); st.State != StateUp || !st.Since.Equal(back.Add(5*ms1)) {
		t.Fatalf("after recovery: %+v", st)
	}
	// A late answer to a probe already counted lost is not matched (no RTT) but proves life.
	if tr2.Reply(5, back.Add(6*ms1)) {
		t.Fatal("late answer matched")
	}
}

func TestTimeoutBounds(t *testing.T) {
	tr := NewTracker(Config{}, t0)
	if got := tr.Timeout(); got != time.Second {
		t.Errorf("timeout before any answer %v, want 1s", got)
	}
	drive(tr, t0, 50*ms1, 30, func(int) (time.Duration, bool) { return 2 * ms1, true })
	if got := tr.Timeout(); got != 20*ms1 {
		t.Errorf("timeout with a fast steady path %v, want the 20ms floor", got)
	}
	tr = NewTracker(Config{}, t0)
	drive(tr, t0, 50*ms1, 30, func(int) (time.Duration, bool) { return 100 * ms1, true })
	if got := tr.Timeout(); got < 100*ms1 || got > 150*ms1 {
		t.Errorf("timeout with a 100ms steady path %v", got)
	}
}

func TestScore(t *testing.T) {
	up := func(srtt, jitter time.Duration, loss float64) Stats {
		return Stats{State: StateUp, SRTT: srtt, Jitter: jitter, Loss: loss}
	}
	for _, tc := range []struct {
		name string
		st   Stats
		l7   *L7
		want float64
	}{
		{"perfect", up(0, 0, 0), nil, 100},
		{"down", Stats{State: StateDown}, nil, 0},
		{"unknown", Stats{State: StateUnknown}, nil, 0},
		{"30ms", up(30*ms1, 0, 0), nil, 96},                 // 40·30/300
		{"300ms saturates", up(time.Second, 0, 0), nil, 60}, // full latency penalty
		{"jitter 25ms", up(0, 25*ms1, 0), nil, 92.5},
		{"loss 5%", up(0, 0, 0.05), nil, 80},
		{"everything bad", up(time.Second, time.Second, 1), nil, 5},
		{"l7 p99 500ms", up(0, 0, 0), &L7{RequestLatencyP99Ms: 500}, 85},
		{"l7 errors 10%", up(0, 0, 0), &L7{ErrorRate: 0.1}, 70},
		{"l7 worst term counts", up(0, 0, 0), &L7{RequestLatencyP99Ms: 100, ConnectionFailures: 5}, 85},
		{"clamped at 0", up(time.Second, time.Second, 1), &L7{ErrorRate: 1}, 0},
	} {
		if got := Score(Weights{}, tc.st, tc.l7); got != tc.want {
			t.Errorf("%s: score %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestParseL7(t *testing.T) {
	for _, tc := range []struct {
		line  string
		field string // "" = valid; "-" = not JSON
		want  L7
	}{
		{`{"path_id":"p1","request_latency_p99_ms":12.5,"error_rate":0.01,"requests_per_second":300,"connection_failures":2}`, "",
			L7{PathID: "p1", RequestLatencyP99Ms: 12.5, ErrorRate: 0.01, RequestsPerSecond: 300, ConnectionFailures: 2}},
		{`  {"path_id":"p1"}  `, "", L7{PathID: "p1"}},
		{`{"request_latency_p99_ms":1}`, "path_id", L7{}},
		{`{"path_id":"p1","error_rate":1.5}`, "error_rate", L7{}},
		{`{"path_id":"p1","request_latency_p99_ms":-1}`, "request_latency_p99_ms", L7{}},
		{`{"path_id":"p1","requests_per_second":"fast"}`, "requests_per_second", L7{}},
		{`{"path_id":"p1","connection_failures":-3}`, "connection_failures", L7{}},
		{`{"path_id":"p1","latency":3}`, "latency", L7{}},
		{`{"path_id":7}`, "path_id", L7{}},
		{`not json`, "-", L7{}},
		{`[1,2]`, "-", L7{}},
	} {
		got, err := ParseL7([]byte(tc.line))
		var fe *FieldError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.line, err)
		case tc.field == "" && got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.line, got, tc.want)
		case tc.field == "-" && (err == nil || errors.As(err, &fe)):
			t.Errorf("%s: err %v, want a non-field error", tc.line, err)
		case tc.field != "" && tc.field != "-" && (!errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.field)):
			t.Errorf("%s: err %v, want one naming field %s", tc.line, err, tc.field)
		}
	}
}
