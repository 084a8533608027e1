package wg

import (
	"context"
	"errors"
	"testing"
	"time"
)

type memKV map[string]string

func (m memKV) Get(_ context.Context, k string) (string, bool, error) {
	v, ok := m[k]
	return v, ok, nil
}
func (m memKV) Set(_ context.Context, k, v string) error { m[k] = v; return nil }

type failKV struct{}

func (failKV) Get(context.Context, string) (string, bool, error) {
	return "", false, errors.New("disk gone")
}
func (failKV) Set(context.Context, string, string) error { return errors.New("disk gone") }

func TestLoadOrCreateKey(t *testing.T) {
	ctx := context.Background()
	made := time.Date(2026, 11, 27, 17, 0, 0, 123456789, time.FixedZone("x", 3600))
	kv := memKV{"other/key": "x"}
	k, created, err := LoadOrCreateKey(ctx, kv, "some/key", made)
	if err != nil || !created.Equal(made) {
		t.Fatalf("new key: created %v, %v", created, err)
	}
	// The stored value is exactly the format existing databases hold.
	want := `{"privateKey":"` + k.String() + `","createdAt":"2026-11-27T16:00:00.123456789Z"}`
	if kv["some/key"] != want || kv["other/key"] != "x" {
		t.Fatalf("kv = %q, want some/key = %s", kv, want)
	}
	k2, c2, err := LoadOrCreateKey(ctx, kv, "some/key", made.Add(time.Hour))
	if err != nil || k2 != k || !c2.Equal(made) || kv["some/key"] != want {
		t.Fatalf("reload: %v %v %v, kv %q", k2, c2, err, kv)
	}
	// A value that does not parse is replaced.
	kv["some/key"] = `{"privateKey":"garbage"}`
	if k3, _, err := LoadOrCreateKey(ctx, kv, "some/key", made); err != nil || k3 == k || kv["some/key"] == `{"privateKey":"garbage"}` {
		t.Fatalf("garbage: %v %v, kv %q", k3, err, kv)
	}
	// No store: a fresh key every call.
	a, _, errA := LoadOrCreateKey(ctx, nil, "some/key", made)
	b, _, errB := LoadOrCreateKey(ctx, nil, "some/key", made)
	if errA != nil || errB != nil || a == b {
		t.Fatalf("nil kv: %v %v %v %v", a, b, errA, errB)
	}
	if _, _, err := LoadOrCreateKey(ctx, failKV{}, "some/key", made); err == nil {
		t.Fatal("a store that cannot be read must fail, not make a new key")
	}
}
