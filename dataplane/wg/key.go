package wg

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KV is the small store a private key is kept in (store.DB satisfies it).
type KV interface {
	Get(ctx context.Context, key string) (string, bool, error)
	Set(ctx context.Context, key, value string) error
}

// storedKey is a private key's value in the store: {"privateKey": base64, "createdAt":
// RFC 3339 UTC}. Existing node databases hold keys in this format: never change it.
type storedKey struct {
	PrivateKey string    `json:"privateKey"`
	CreatedAt  time.Time `json:"createdAt"`
}

// LoadOrCreateKey returns the private key kept in kv at storeKey and when it was made,
// or makes one (created now) and keeps it there: a restart keeps the key, so peers keep
// their sessions. A value that does not parse is replaced by a new key. kv nil: a new
// key every call, kept nowhere.
func LoadOrCreateKey(ctx context.Context, kv KV, storeKey string, now time.Time) (wgtypes.Key, time.Time, error) {
	k, created, ok, err := LoadKey(ctx, kv, storeKey)
	if err != nil || ok {
		return k, created, err
	}
	k, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, time.Time{}, fmt.Errorf("wg: generate key: %w", err)
	}
	if err := SaveKey(ctx, kv, storeKey, k, now); err != nil {
		return wgtypes.Key{}, time.Time{}, err
	}
	return k, now, nil
}

// LoadKey returns the private key kept in kv at storeKey and when it was made; ok is
// false when there is none (or kv is nil, or the value does not parse).
func LoadKey(ctx context.Context, kv KV, storeKey string) (k wgtypes.Key, created time.Time, ok bool, err error) {
	if kv == nil {
		return k, created, false, nil
	}
	v, has, err := kv.Get(ctx, storeKey)
	if err != nil {
		return k, created, false, fmt.Errorf("wg: read %s: %w", storeKey, err)
	}
	if !has {
		return k, created, false, nil
	}
	var s storedKey
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return k, created, false, nil
	}
	if k, err = wgtypes.ParseKey(s.PrivateKey); err != nil {
		return wgtypes.Key{}, created, false, nil
	}
	return k, s.CreatedAt, true, nil
}

// SaveKey keeps k, made at created, in kv at storeKey (kv nil: nowhere).
func SaveKey(ctx context.Context, kv KV, storeKey string, k wgtypes.Key, created time.Time) error {
	if kv == nil {
		return nil
	}
	b, err := json.Marshal(storedKey{PrivateKey: k.String(), CreatedAt: created.UTC()})
	if err != nil {
		return fmt.Errorf("wg: encode %s: %w", storeKey, err)
	}
	if err := kv.Set(ctx, storeKey, string(b)); err != nil {
		return fmt.Errorf("wg: save %s: %w", storeKey, err)
	}
	return nil
}
