package main

import (
	"bytes"
	"os"
	"testing"
)

// The committed CRD manifest must be what the current mcs-api module embeds.
func TestCommittedCRDsAreCurrent(t *testing.T) {
	got, err := os.ReadFile("../01-mcs-crds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, render()) {
		t.Fatal("manifests/01-mcs-crds.yaml is stale: run `go generate ./manifests/...`")
	}
}
