package enforce

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/bpf"
	"github.com/patronus/patronus/policy"
)

// Verdict of a reported flow.
type Verdict uint8

const (
	Allowed Verdict = 1
	Denied  Verdict = 2
)

func (v Verdict) String() string {
	if v == Allowed {
		return "allow"
	}
	return "deny"
}

// Event is one audited flow: the first packet of a denied (or, with AuditAllowed, an
// allowed) connection attempt.
type Event struct {
	Time      time.Time
	Src, Dst  netip.AddrPort
	Protocol  policy.Protocol
	Direction Direction // of the endpoint whose policy decided
	Verdict   Verdict
	// Endpoint is "namespace/pod" of the endpoint whose policy decided, or
	// "ifindex:N" if this process has not been told about it yet.
	Endpoint string
	// Policies are the policies selecting that endpoint in Direction (none allowed
	// the flow, for a denial).
	Policies []string
}

// EventReader reads events from the pinned ring buffer.
type EventReader struct {
	e  *EBPF
	rd *ringbuf.Reader
	// monotonic → wall clock: the programs stamp CLOCK_MONOTONIC.
	bootOffset time.Duration
}

// Events opens a reader. One reader at a time: the ring buffer has a single consumer.
func (e *EBPF) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(e.objs.PtEvents)
	if err != nil {
		return nil, fmt.Errorf("opening event ring buffer: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		rd.Close()
		return nil, err
	}
	off := time.Since(time.Unix(0, 0)) - time.Duration(ts.Nano())
	return &EventReader{e: e, rd: rd, bootOffset: off}, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read blocks for the next event.
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		return Event{}, err
	}
	var raw bpf.PolicyEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.LittleEndian, &raw); err != nil {
		return Event{}, fmt.Errorf("decoding event: %w", err)
	}
	ev := Event{
		Time:      time.Unix(0, 0).Add(r.bootOffset + time.Duration(raw.TsNs)).UTC(),
		Src:       netip.AddrPortFrom(netip.AddrFrom16(raw.Saddr).Unmap(), htons(raw.Sport)),
		Dst:       netip.AddrPortFrom(netip.AddrFrom16(raw.Daddr).Unmap(), htons(raw.Dport)),
		Protocol:  policy.Protocol(raw.Proto),
		Direction: Direction(raw.Dir),
		Verdict:   Verdict(raw.Verdict),
		Endpoint:  "ifindex:" + strconv.Itoa(int(raw.Ifindex)),
	}
	r.e.mu.Lock()
	if ep, ok := r.e.byIf[raw.Ifindex]; ok {
		ev.Endpoint = ep.Key()
		if ev.Direction == Egress {
			ev.Policies = ep.EgressPolicies
		} else {
			ev.Policies = ep.IngressPolicies
		}
	}
	r.e.mu.Unlock()
	return ev, nil
}

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *EventReader) Close() error { return r.rd.Close() }

// DenyCount is the number of packets an endpoint's policy dropped in one direction.
type DenyCount struct {
	Endpoint  Endpoint
	Direction Direction
	Packets   uint64
}

// Denies returns the deny counters of the endpoints this process knows. The counters
// are kept in pinned per-CPU maps, so they continue across agent restarts; they are
// deleted with the endpoint.
func (e *EBPF) Denies() ([]DenyCount, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []DenyCount
	var k bpf.PolicyDenyKey
	var v []uint64
	it := e.objs.PtDenies.Iterate()
	for it.Next(&k, &v) {
		ep, ok := e.byIf[k.Ifindex]
		if !ok {
			continue
		}
		var n uint64
		for _, c := range v {
			n += c
		}
		out = append(out, DenyCount{Endpoint: ep, Direction: Direction(k.Dir), Packets: n})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading deny counters: %w", err)
	}
	return out, nil
}

// LostEvents is how many events the programs dropped because the ring buffer was full.
func (e *EBPF) LostEvents() (uint64, error) {
	var v []uint64
	if err := e.objs.PtStats.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("reading stats: %w", err)
	}
	var n uint64
	for _, c := range v {
		n += c
	}
	return n, nil
}

// AuditRecord is an Event as one line of the audit log (JSON lines).
type AuditRecord struct {
	Time        time.Time `json:"time"`
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Port        uint16    `json:"port"`
	Protocol    string    `json:"protocol"`
	Verdict     string    `json:"verdict"`
	// Policy lists the policies selecting the endpoint in Direction, comma-separated:
	// for a denial, none of their rules allowed the flow.
	Policy    string `json:"policy"`
	Endpoint  string `json:"endpoint"`
	Direction string `json:"direction"`
}

// Audit converts the event for the audit log.
func (ev Event) Audit() AuditRecord {
	return AuditRecord{
		Time:        ev.Time,
		Source:      ev.Src.Addr().String(),
		Destination: ev.Dst.Addr().String(),
		Port:        ev.Dst.Port(),
		Protocol:    protocolName(ev.Protocol),
		Verdict:     ev.Verdict.String(),
		Policy:      strings.Join(ev.Policies, ","),
		Endpoint:    ev.Endpoint,
		Direction:   ev.Direction.String(),
	}
}

func protocolName(p policy.Protocol) string {
	switch p {
	case policy.TCP:
		return "TCP"
	case policy.UDP:
		return "UDP"
	case policy.SCTP:
		return "SCTP"
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return strconv.Itoa(int(p))
}
