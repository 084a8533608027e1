package nodenet

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
)

// localapi.NodeNet mirrors Status's JSON (localapi is linked into the CNI plugin and may
// not import nodenet): a fully populated Status must go through NodeNet and back without
// losing or renaming a field, and must fill every NodeNet field.
func TestStatusMirroredByLocalAPINodeNet(t *testing.T) {
	at := time.Date(2026, 11, 27, 17, 4, 5, 6e6, time.UTC)
	st := Status{
		Block: netip.MustParsePrefix("10.244.3.0/24"), Source: SourceGossip, ClaimedAt: at,
		ConfList: "/etc/cni/net.d/10-patronus.conflist", Peers: 2,
		Routes: []Route{{Dst: netip.MustParsePrefix("10.244.4.0/24"), Via: netip.MustParseAddr("10.244.4.0"), Dev: "ptx0", OnLink: true}},
		VXLAN:  true, Conflicts: []string{"10.244.5.0/24 (node c overlaps node d)"},
		Lost: []LostPod{{Namespace: "default", Name: "web-1", ContainerID: "abc123",
			IPs: []netip.Prefix{netip.MustParsePrefix("10.244.9.7/24")}, Block: netip.MustParsePrefix("10.244.9.0/24")}},
		LastError:  "route 10.244.6.0/24: file exists",
		Encryption: EncryptionWireGuard, Strict: true, StrictDropped: 7,
		WireGuard: &WGStatus{Device: WGDevice, PublicKey: "BeV3814JvpR9Kxjc0xSEgKQgbTyNG6EwF2G2Q+2XuAI=", Port: WGPort, MTU: 1420,
			Implementation: "kernel", Peers: 1, Error: "peer b: no endpoint"},
		PeerStates: []PeerState{{Node: "b", Blocks: []netip.Prefix{netip.MustParsePrefix("10.244.4.0/24")}, Encrypted: true,
			PublicKey: "2s3f5yK92p/b8hi9llTKUbak+P9WYR3JJgcAfZNzH5I=", Endpoint: "192.0.2.4:51819", LastHandshake: at.Add(time.Minute),
			RxBytes: 1500, TxBytes: 3000, Reason: PlainNoDevice, Dropped: "dropped: peer has no key (strict)"}}, // every field set, even ones that exclude each other
	}
	// A field added to Status must be added here too (and so to NodeNet).
	populated(t, reflect.ValueOf(st), "Status")

	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var nn localapi.NodeNet
	if err := json.Unmarshal(b, &nn); err != nil {
		t.Fatal(err)
	}
	// A NodeNet field Status's JSON does not fill (renamed, or only on one side).
	populated(t, reflect.ValueOf(nn), "localapi.NodeNet")

	b2, err := json.Marshal(nn)
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b2, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Status JSON through localapi.NodeNet changed:\nStatus:  %s\nNodeNet: %s", b, b2)
	}
	var back Status
	if err := json.Unmarshal(b2, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, st) {
		t.Fatalf("Status -> NodeNet -> Status:\n got %+v\nwant %+v", back, st)
	}
}

// populated fails for every field of v (a struct of this module, recursively through
// pointers, slices and nested structs) that holds its zero value.
func populated(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is nil", path)
			return
		}
		populated(t, v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			t.Errorf("%s is empty", path)
		}
		for i := range v.Len() {
			populated(t, v.Index(i), path+"[]")
		}
	case reflect.Struct:
		if !strings.HasPrefix(v.Type().PkgPath(), "github.com/patronus/patronus/") {
			if v.IsZero() { // time.Time, netip.Prefix, ...
				t.Errorf("%s is zero", path)
			}
			return
		}
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				populated(t, v.Field(i), path+"."+f.Name)
			}
		}
	default:
		if v.IsZero() {
			t.Errorf("%s is zero", path)
		}
	}
}
