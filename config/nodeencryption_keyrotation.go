package config

import (
	"fmt"
	"strings"
	"time"
)

// KeyNodeEncryptionKeyRotation is how often the node-to-node WireGuard key is rotated
// (package nodenet, Encrypt.KeyRotation): a duration of at least
// MinNodeEncryptionKeyRotation, or "0" / "off" (the default: the key is rotated only on
// demand, `patronus keys rotate --node`). Only meaningful with node-encryption wireguard.
const KeyNodeEncryptionKeyRotation = "node-encryption-key-rotation"

// MinNodeEncryptionKeyRotation is its smallest value: every rotation costs each peer a
// handshake and the traffic a short stall.
const MinNodeEncryptionKeyRotation = time.Minute

// loadNodeEncryptionKeyRotation sets cfg.NodeEncryptionKeyRotation from the ConfigMap.
func loadNodeEncryptionKeyRotation(cfg *Config, data map[string]string, cmSource string) error {
	v, ok := data[KeyNodeEncryptionKeyRotation]
	if !ok {
		return nil
	}
	switch strings.TrimSpace(v) {
	case "", "0", "off":
		cfg.NodeEncryptionKeyRotation = 0
		return nil
	}
	d, err := parsePositiveDuration(v, MinNodeEncryptionKeyRotation)
	if err != nil {
		return &Error{Source: cmSource, Key: KeyNodeEncryptionKeyRotation, Err: fmt.Errorf("%w (or 0 / off: no periodic rotation)", err)}
	}
	cfg.NodeEncryptionKeyRotation = d
	return nil
}
