package cli

import (
	"strconv"
	"strings"

	"github.com/patronus/patronus/config"
)

// nodeEncryptionTier is the agent's NODE_ENCRYPTION tier of node-to-node encryption: the
// --node-encryption flag when given, else $NODE_ENCRYPTION ("" = the ConfigMap decides).
// A value other than wireguard or none is a usage error naming where it came from.
func nodeEncryptionTier(flag string, changed bool, getenv func(string) string) (string, error) {
	v, from := flag, "--node-encryption"
	if !changed {
		v, from = getenv(config.EnvNodeEncryption), "$"+config.EnvNodeEncryption
	}
	if strings.TrimSpace(v) == "" {
		if changed {
			return "", usagef("--node-encryption: accepted values are %s and %s", config.NodeEncryptionWireGuard, config.NodeEncryptionNone)
		}
		return "", nil
	}
	m, err := config.ParseNodeEncryption(v)
	if err != nil {
		return "", usagef("%s %v", from, err)
	}
	return m, nil
}

// nodeEncryptionStrictTier is the agent's NODE_ENCRYPTION_STRICT tier of strict node
// encryption: the --node-encryption-strict flag when given, else $NODE_ENCRYPTION_STRICT
// ("" = the ConfigMap decides; config.Load validates the value and names its source).
func nodeEncryptionStrictTier(flag, changed bool, getenv func(string) string) string {
	if changed {
		return strconv.FormatBool(flag)
	}
	return getenv(config.EnvNodeEncryptionStrict)
}
