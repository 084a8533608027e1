package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/policy"
)

// Denied packets reach the agent over NFLOG (nfnetlink_log): the endpoint chains' log
// rule sends the packet's headers, prefixed with the chain, to a group of the node
// namespace, and LogReader turns them into the same events the eBPF ring buffer yields.
// With Options.AuditAllowed the audit chains send the first packet of every allowed new
// connection of an audited endpoint to the same group (prefix "ai<tag>" / "ae<tag>").

const (
	// DefaultLogGroup is the NFLOG group the agent uses in the node namespace
	// (docs/CONTRACT.md).
	DefaultLogGroup = 0x5054
	logRate         = 100 // log messages a second per endpoint chain, then drops unreported
	logBurst        = 20
	logSnaplen      = 128 // IP header and the first bytes of the transport header
	// Allowed new connections of audited endpoints: a second per endpoint and direction.
	allowLogRate  = 1000
	allowLogBurst = 200

	nfnlSubsysULOG  = 4
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1
	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaPayload    = 9
	nfulaPrefix     = 10
	cfgCmdBind      = 1
	cfgCmdUnbind    = 2
	copyPacket      = 2
)

// LogReader reads the denials (and, with Options.AuditAllowed, the allowed new
// connections of audited endpoints) an Enforcer with Options.LogGroup reports.
type LogReader struct {
	e     *Enforcer
	conn  *netlink.Conn
	group uint16
}

// LogReader subscribes to the enforcer's NFLOG group in its namespace. One reader per
// group and namespace.
func (e *Enforcer) LogReader() (*LogReader, error) {
	if e.opts.LogGroup == 0 {
		return nil, errors.New("nftables: no LogGroup configured")
	}
	cfg := &netlink.Config{}
	if e.nsFd != nil {
		cfg.NetNS = int(e.nsFd.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	r := &LogReader{e: e, conn: c, group: e.opts.LogGroup}
	// A previous agent's binding of the group may linger only while its socket lives;
	// unbinding first makes the bind below ours either way.
	_ = r.config(netlink.Attribute{Type: nfulaCfgCmd, Data: []byte{cfgCmdUnbind}})
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, logSnaplen)
	mode[4] = copyPacket
	for _, a := range []netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{cfgCmdBind}}, {Type: nfulaCfgMode, Data: mode}} {
		if err := r.config(a); err != nil {
			c.Close()
			return nil, fmt.Errorf("nflog group %d: %w", r.group, err)
		}
	}
	return r, nil
}

func (r *LogReader) config(a netlink.Attribute) error {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{a})
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, 0, byte(r.group >> 8), byte(r.group)} // nfgenmsg: family, version, res_id (BE)
	_, err = r.conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(hdr, attrs...),
	})
	return err
}

// SetDeadline makes Read return an error wrapping os.ErrDeadlineExceeded after t.
func (r *LogReader) SetDeadline(t time.Time) error { return r.conn.SetReadDeadline(t) }

// Close stops the reader; a blocked Read returns an error.
func (r *LogReader) Close() error { return r.conn.Close() }

// Read blocks for the next events (one netlink read may carry several).
func (r *LogReader) Read() ([]enforce.Event, error) {
	for {
		msgs, err := r.conn.Receive()
		if err != nil {
			return nil, err
		}
		var out []enforce.Event
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
				continue
			}
			if ev, ok := r.decode(m.Data[4:]); ok {
				out = append(out, ev)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

func (r *LogReader) decode(b []byte) (enforce.Event, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return enforce.Event{}, false
	}
	var prefix string
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	if ad.Err() != nil || payload == nil {
		return enforce.Event{}, false
	}
	ev := enforce.Event{Time: time.Now().UTC(), Verdict: enforce.Denied, Endpoint: "chain:" + prefix}
	if !parseHeaders(payload, &ev) {
		return enforce.Event{}, false
	}
	if isAuditChain(prefix) { // an allowed new connection
		ev.Verdict = enforce.Allowed
		if prefix[1] == 'e' {
			ev.Direction = enforce.Egress
		}
		r.e.mu.Lock()
		if ep, ok := r.e.audited[prefix]; ok {
			ev.Endpoint = ep.Key()
			ev.Policies = ep.IngressPolicies
			if ev.Direction == enforce.Egress {
				ev.Policies = ep.EgressPolicies
			}
		}
		r.e.mu.Unlock()
		return ev, true
	}
	if len(prefix) > 0 && prefix[0] == 'e' {
		ev.Direction = enforce.Egress
	}
	r.e.mu.Lock()
	for name, ep := range r.e.known {
		if stableName(name) == prefix {
			ev.Endpoint = ep.Key()
			ev.Policies = ep.IngressPolicies
			if ev.Direction == enforce.Egress {
				ev.Policies = ep.EgressPolicies
			}
			break
		}
	}
	r.e.mu.Unlock()
	return ev, true
}

// parseHeaders fills addresses, protocol and ports from an IPv4 or IPv6 packet.
func parseHeaders(p []byte, ev *enforce.Event) bool {
	if len(p) < 1 {
		return false
	}
	var src, dst netip.Addr
	var proto uint8
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0xf) * 4
		if len(p) < 20 || ihl < 20 || len(p) < ihl {
			return false
		}
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		proto, l4 = p[9], p[ihl:]
	case 6:
		if len(p) < 40 {
			return false
		}
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		proto, l4 = p[6], p[40:] // extension headers are not followed: ports stay 0
	default:
		return false
	}
	var sport, dport uint16
	if (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_SCTP) && len(l4) >= 4 {
		sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	}
	ev.Src, ev.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	ev.Protocol = policy.Protocol(proto)
	return true
}
