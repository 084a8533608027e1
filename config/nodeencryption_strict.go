package config

import (
	"fmt"
	"strings"
)

// Strict node-to-node encryption (package nodenet, Encrypt.Strict): pod traffic between
// nodes is dropped rather than sent in the clear.
const (
	// KeyNodeEncryptionStrict is "true" | "false" (default false); true needs
	// node-encryption wireguard.
	KeyNodeEncryptionStrict = "node-encryption-strict"
	// EnvNodeEncryptionStrict (or the agent's --node-encryption-strict, same tier)
	// overrides it.
	EnvNodeEncryptionStrict = "NODE_ENCRYPTION_STRICT"
)

// loadNodeEncryptionStrict sets cfg.NodeEncryptionStrict from the ConfigMap key, then the
// environment tier, once cfg.NodeEncryption is final: strict without wireguard is an
// error (a node asked never to send pod traffic in the clear must not run unencrypted).
func loadNodeEncryptionStrict(cfg *Config, in Input, cmSource string) error {
	source, key := "", KeyNodeEncryptionStrict
	if v, ok := in.ConfigMap[KeyNodeEncryptionStrict]; ok {
		b, err := parseBool(v)
		if err != nil {
			return &Error{Source: cmSource, Key: KeyNodeEncryptionStrict, Err: err}
		}
		cfg.NodeEncryptionStrict, source = b, cmSource
	}
	if v := strings.TrimSpace(in.NodeEncryptionStrictEnv); v != "" {
		b, err := parseBool(v)
		if err != nil {
			return &Error{Source: "environment", Key: EnvNodeEncryptionStrict, Err: err}
		}
		cfg.NodeEncryptionStrict, source, key = b, "environment", EnvNodeEncryptionStrict
	}
	if source != "" {
		cfg.NodeEncryptionStrictSource = source + " key " + key
	}
	if cfg.NodeEncryptionStrict && cfg.NodeEncryption != NodeEncryptionWireGuard {
		from := cfg.NodeEncryptionSource
		if from == "" {
			from = "the default"
		}
		return &Error{Source: source, Key: key, Err: fmt.Errorf("true needs %s %s, but it is %s (from %s)",
			KeyNodeEncryption, NodeEncryptionWireGuard, cfg.NodeEncryption, from)}
	}
	return nil
}
