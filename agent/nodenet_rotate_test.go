package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"github.com/patronus/patronus/nodenet"
)

// The agent's local API serves POST /v1/nodenet/keys/rotate (`patronus keys rotate
// --node`): 503 until the nodenet controller exists, then the controller's answer (409
// here: node encryption is off).
func TestNodeNetRotateHandler(t *testing.T) {
	a := &agent{opts: Options{NodeNet: &NodeNetOptions{}}}
	mux := http.NewServeMux()
	for _, h := range a.nodeNetHandlers() {
		mux.Handle(h.Pattern, h.Handler)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	post := func() int {
		t.Helper()
		resp, err := http.Post(srv.URL+nodenet.RotatePath, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(); code != http.StatusServiceUnavailable {
		t.Fatalf("before the controller: HTTP %d, want 503", code)
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	c, err := nodenet.New(nodenet.Options{Client: kfake.Kube(fake.NewSimpleClientset(n)), NodeName: "n1",
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDatapath{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	a.nodeNet.ctrl.Store(c)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code := post()
		if code == http.StatusConflict {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("with the controller (encryption off): HTTP %d, want 409", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nopDatapath programs nothing (the handler test needs a running controller only).
type nopDatapath struct{}

func (nopDatapath) Apply(nodenet.Local, nodenet.Plan) error { return nil }
func (nopDatapath) SetMasquerade(nodenet.Masquerade) error  { return nil }
func (nopDatapath) Close()                                  {}
func (nopDatapath) LocalLink(netip.Addr) (string, netip.Prefix, error) {
	return "eth0", netip.MustParsePrefix("192.0.2.0/24"), nil
}
