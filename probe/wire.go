// Package probe runs the active link probes of path selection: a sequence-numbered UDP
// echo per path (every probe-interval, 50 ms by default) answered by a Responder on the
// remote gateway, fed into a paths.Monitor; plus the local inputs around it: the L7
// metrics socket, the GET /v1/paths handler the agent mounts on its local API, and
// Prometheus gauges.
package probe

import (
	"encoding/binary"
	"errors"
)

// DefaultPort is the probe responder's UDP port (docs/CONTRACT.md).
const DefaultPort = 7948

// Wire format, 32 bytes, big endian:
//
//	0  magic "PTPR"
//	4  version (1)
//	5  kind (1 = echo request, 2 = echo reply)
//	6  reserved (2 bytes, zero)
//	8  session (8 bytes, random per path and prober start: stale answers are ignored)
//	16 sequence number (8 bytes)
//	24 sender timestamp (8 bytes, ns on the sender's monotonic clock; echoed unchanged)
//
// The responder flips the kind and sends the datagram back; it keeps no state.
const (
	packetLen   = 32
	version     = 1
	kindRequest = 1
	kindReply   = 2
	magic       = "PTPR"
)

type packet struct {
	kind    byte
	session uint64
	seq     uint64
	ts      int64
}

var errNotProbe = errors.New("not a probe packet")

func (p packet) marshal(b []byte) []byte {
	b = append(b[:0], magic...)
	b = append(b, version, p.kind, 0, 0)
	b = binary.BigEndian.AppendUint64(b, p.session)
	b = binary.BigEndian.AppendUint64(b, p.seq)
	return binary.BigEndian.AppendUint64(b, uint64(p.ts))
}

func unmarshal(b []byte) (packet, error) {
	if len(b) < packetLen || string(b[:4]) != magic || b[4] != version || (b[5] != kindRequest && b[5] != kindReply) {
		return packet{}, errNotProbe
	}
	return packet{kind: b[5], session: binary.BigEndian.Uint64(b[8:]), seq: binary.BigEndian.Uint64(b[16:]),
		ts: int64(binary.BigEndian.Uint64(b[24:]))}, nil
}
