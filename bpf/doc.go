// Package bpf holds the NetworkPolicy datapath's BPF C source (src/policy.c) and the Go
// bindings bpf2go generates from it (the compiled object is embedded). The programs
// and map layouts are described in src/policy.c; dataplane/enforce loads, pins and
// attaches them and fills the maps.
package bpf

//go:generate go tool bpf2go -tags linux -go-package bpf -output-stem policy -target bpfel -type endpoint -type classes -type cidr_key -type port_key -type ct_key -type ct_val -type deny_key -type defer_key -type event Policy src/policy.c -- -I/usr/include/x86_64-linux-gnu -mcpu=v3 -g -Wall -Werror
