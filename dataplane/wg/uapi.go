package wg

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The userspace device is configured in-process with the cross-platform configuration
// protocol (https://www.wireguard.com/xplatform/): the same text wgctrl would send over
// the UAPI socket, without the socket.

// encodeConfig writes cfg as "set" protocol lines (without the "set=1" header).
func encodeConfig(cfg wgtypes.Config) string {
	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + "=" + v + "\n") }
	if cfg.PrivateKey != nil {
		line("private_key", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		line("listen_port", strconv.Itoa(*cfg.ListenPort))
	}
	if cfg.FirewallMark != nil {
		line("fwmark", strconv.Itoa(*cfg.FirewallMark))
	}
	if cfg.ReplacePeers {
		line("replace_peers", "true")
	}
	for _, p := range cfg.Peers {
		line("public_key", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			line("remove", "true")
			continue
		}
		if p.UpdateOnly {
			line("update_only", "true")
		}
		if p.PresharedKey != nil {
			line("preshared_key", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			line("endpoint", netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String())
		}
		if p.PersistentKeepaliveInterval != nil {
			line("persistent_keepalive_interval", strconv.Itoa(int(p.PersistentKeepaliveInterval.Seconds())))
		}
		if p.ReplaceAllowedIPs {
			line("replace_allowed_ips", "true")
		}
		for _, n := range p.AllowedIPs {
			line("allowed_ip", n.String())
		}
	}
	return b.String()
}

// decodeState parses "get" protocol output.
func decodeState(name, text string) (*wgtypes.Device, error) {
	d := &wgtypes.Device{Name: name, Type: wgtypes.Userspace}
	var p *wgtypes.Peer
	var sec, nsec int64
	flush := func() {
		if p != nil {
			if sec != 0 || nsec != 0 {
				p.LastHandshakeTime = time.Unix(sec, nsec)
			}
			d.Peers = append(d.Peers, *p)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "private_key":
			var key wgtypes.Key
			if key, err = hexKey(v); err == nil {
				d.PrivateKey, d.PublicKey = key, key.PublicKey()
			}
		case "listen_port":
			d.ListenPort, err = strconv.Atoi(v)
		case "fwmark":
			d.FirewallMark, err = strconv.Atoi(v)
		case "public_key":
			flush()
			var key wgtypes.Key
			key, err = hexKey(v)
			p = &wgtypes.Peer{PublicKey: key, ProtocolVersion: 1}
		case "preshared_key":
			if p != nil {
				p.PresharedKey, err = hexKey(v)
			}
		case "endpoint":
			if p != nil {
				var ap netip.AddrPort
				if ap, err = netip.ParseAddrPort(v); err == nil {
					p.Endpoint = net.UDPAddrFromAddrPort(ap)
				}
			}
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(v, 10, 64)
		case "tx_bytes":
			if p != nil {
				p.TransmitBytes, err = strconv.ParseInt(v, 10, 64)
			}
		case "rx_bytes":
			if p != nil {
				p.ReceiveBytes, err = strconv.ParseInt(v, 10, 64)
			}
		case "persistent_keepalive_interval":
			if p != nil {
				var n int
				n, err = strconv.Atoi(v)
				p.PersistentKeepaliveInterval = time.Duration(n) * time.Second
			}
		case "allowed_ip":
			if p != nil {
				var pf netip.Prefix
				if pf, err = netip.ParsePrefix(v); err == nil {
					p.AllowedIPs = append(p.AllowedIPs, prefixNet(pf))
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("wg: device %s: parsing %s=%s: %w", name, k, v, err)
		}
	}
	flush()
	return d, nil
}

func hexKey(s string) (wgtypes.Key, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return wgtypes.Key{}, err
	}
	return wgtypes.NewKey(b)
}
