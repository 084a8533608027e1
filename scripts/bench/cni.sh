#!/usr/bin/env bash
# CNI ADD/DEL latency: the reference bridge plugin (+ host-local binary) against
# patronus-cni (host-local in-process, with the host-local binary exec'd, and with policy
# enforcement on against a stand-in agent that answers at once), in the same run, same kind
# of namespaces, same host-local IPAM; then p50/p99 of C concurrent ADDs.
# Also the binary's package-init cost (GODEBUG=inittrace=1), paid on every plugin call.
#
#   scripts/bench/cni.sh [N]      N sequential ADD+DEL cycles per plugin (default 300)
#   C=32 ROUNDS=5 scripts/bench/cni.sh
#   CNI_ONLY=1 scripts/bench/cni.sh   the plugin linked alone (no agent/CLI package init)
#   PATRONUS_BIN=bin/patronus scripts/bench/cni.sh   an already built binary
#   VARIANTS=0 scripts/bench/cni.sh   skip the start-up cost table (below)
#   BASELINE_BIN=/tmp/main-patronus scripts/bench/cni.sh 0   start-up table with a baseline build
#   N=0 ... only the start-up table: scripts/bench/cni.sh 0
#
# The start-up table runs builds as patronus-cni with CNI_COMMAND=VERSION: the shipped
# binary, the plugin alone (a main linking only cni.Main), and, with
# BASELINE_BIN=<binary>, another build measured in the same run (e.g. the main branch's,
# when comparing a change). Package counts and bytes are exact; CPU is perf stat's task-clock.
#
# Needs root. Everything runs in its own "node" namespace (pt-bench-*) with pods in
# their own namespaces; nothing touches the root namespace. Prints a Markdown report.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-300}
C=${C:-32}
ROUNDS=${ROUNDS:-5}
[ "$(id -u)" = 0 ] || { echo "cni.sh: needs root (network namespaces)" >&2; exit 1; }

PLUGINS=${PATRONUS_CNI_PLUGINS:-$(./scripts/build-cni-plugins.sh)}
TMP=$(mktemp -d /tmp/pt-bench-cni.XXXXXX)
TAG=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
NODE=pt-bench-node-$TAG
PODS=()
cleanup() {
	for p in "${PODS[@]}"; do ip netns del "$p" 2>/dev/null || true; done
	ip netns del "$NODE" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

BIN=${PATRONUS_BIN:-}
if [ "${CNI_ONLY:-0}" = 1 ]; then
	# The plugin's own cost: the same module with a main that links only cni.Main (what
	# patronus-cni would cost if the rest of the binary added no package init).
	echo "cni.sh: building a CNI-only binary (CNI_ONLY=1)" >&2
	printf 'package main\n\nimport "github.com/patronus/patronus/cni"\n\nfunc main() { cni.Main() }\n' >"$TMP/cnionly.go"
	printf '{"Replace":{"%s/main.go":"%s/cnionly.go"}}' "$PWD" "$TMP" >"$TMP/overlay.json"
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -overlay "$TMP/overlay.json" -o "$TMP/patronus" .
	BIN=$TMP/patronus
elif [ -z "$BIN" ]; then
	echo "cni.sh: building patronus" >&2
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$TMP/patronus" .
	BIN=$TMP/patronus
fi
mkdir -p "$TMP/bin"
cp "$BIN" "$TMP/bin/patronus-cni"
ln -s "$PLUGINS/bridge" "$PLUGINS/host-local" "$TMP/bin/"

ip netns add "$NODE"
ip netns exec "$NODE" ip link set lo up
for i in $(seq 0 $((C - 1))); do
	PODS+=("pt-bench-p$i-$TAG")
	ip netns add "pt-bench-p$i-$TAG"
done

mkdir -p "$TMP/driver"
cat >"$TMP/driver/go.mod" <<'GOMOD'
module cnibench

go 1.22
GOMOD
cat >"$TMP/driver/main.go" <<'GO'
// cnibench execs CNI plugins as a runtime does and times each call.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

type variant struct {
	name, plugin, conf string
	env               []string
}

// call runs one plugin command; it returns the wall time and the CPU time (user+sys) of
// the plugin process and its children (host-local when exec'd).
func call(bin string, v variant, cmd, id, netns string) (time.Duration, error) {
	d, _, err := callCPU(bin, v, cmd, id, netns)
	return d, err
}

func callCPU(bin string, v variant, cmd, id, netns string) (time.Duration, time.Duration, error) {
	c := exec.Command(filepath.Join(bin, v.plugin))
	c.Env = append([]string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0", "CNI_PATH=" + bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + id}, v.env...)
	c.Stdin = strings.NewReader(v.conf)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &before)
	start := time.Now()
	err := c.Run()
	d := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano())
	if err != nil {
		return d, cpu, fmt.Errorf("%s %s %s: %v: %s", v.name, cmd, id, err, out.String())
	}
	return d, cpu, nil
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

func mean(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}

func main() {
	bin := flag.String("bin", "", "plugin dir")
	tmp := flag.String("tmp", "", "scratch dir")
	n := flag.Int("n", 300, "sequential cycles")
	rounds := flag.Int("rounds", 5, "concurrent rounds")
	pods := flag.String("pods", "", "comma-separated pod netns paths")
	flag.Parse()
	netnses := strings.Split(*pods, ",")
	routes := `"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.96.0.0/12"}]`
	vs := []variant{
		{name: "reference bridge + host-local (exec)", plugin: "bridge",
			conf: `{"cniVersion":"1.0.0","name":"bench-ref","type":"bridge","bridge":"refbr0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.10.0.0/16",` + routes + `,"dataDir":"` + *tmp + `/ipam"}}`},
		{name: "patronus-cni, host-local in-process", plugin: "patronus-cni",
			conf: `{"cniVersion":"1.0.0","name":"bench-pt","type":"patronus-cni","bridge":"cni-bridge0","ipam":{"type":"host-local","subnet":"10.20.0.0/16",` + routes + `,"dataDir":"` + *tmp + `/ipam"},"sdwan":{"database":"` + *tmp + `/db/k8s-sdwan.db","cluster_id":"bench"}}`},
		{name: "patronus-cni, host-local exec'd", plugin: "patronus-cni", env: []string{"PATRONUS_CNI_EXEC_IPAM=1"},
			conf: `{"cniVersion":"1.0.0","name":"bench-ptx","type":"patronus-cni","bridge":"ptxbr0","ipam":{"type":"host-local","subnet":"10.30.0.0/16",` + routes + `,"dataDir":"` + *tmp + `/ipam"},"sdwan":{"database":"` + *tmp + `/db/k8s-sdwan.db","cluster_id":"bench"}}`},
		{name: "patronus-cni, in-process, policy enforcement on (stand-in agent answers at once)", plugin: "patronus-cni",
			conf: `{"cniVersion":"1.0.0","name":"bench-pte","type":"patronus-cni","bridge":"ptebr0","ipam":{"type":"host-local","subnet":"10.40.0.0/16",` + routes + `,"dataDir":"` + *tmp + `/ipam"},"sdwan":{"database":"` + *tmp + `/db/k8s-sdwan.db","cluster_id":"bench","enable_policy_enforcement":true,"agent_socket":"` + *tmp + `/agent.sock"}}`},
	}
	// The stand-in agent: answers the plugin's endpoint sync and remove at once, so the
	// enforcement variant measures the plugin's side of the call (dial, HTTP, JSON), not
	// the agent's datapath programming (BENCHMARKS.md, NetworkPolicy update latency).
	ln, err := net.Listen("unix", *tmp+"/agent.sock")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
	}))
	// Warm up: creates bridges, database, data dirs, page cache.
	for _, v := range vs {
		for i := 0; i < 5; i++ {
			id := fmt.Sprintf("warm-%d", i)
			if _, err := call(*bin, v, "ADD", id, netnses[0]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			if _, err := call(*bin, v, "DEL", id, netnses[0]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	add := make([][]time.Duration, len(vs))
	addCPU := make([][]time.Duration, len(vs))
	del := make([][]time.Duration, len(vs))
	// Interleaved so drift in machine load hits every variant alike.
	for i := 0; i < *n; i++ {
		for k, v := range vs {
			id := fmt.Sprintf("seq-%d", i)
			d, cpu, err := callCPU(*bin, v, "ADD", id, netnses[0])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			add[k] = append(add[k], d)
			addCPU[k] = append(addCPU[k], cpu)
			d, err = call(*bin, v, "DEL", id, netnses[0])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			del[k] = append(del[k], d)
		}
	}
	fmt.Printf("Sequential, %d ADD+DEL cycles per plugin (interleaved), ms:\n\n", *n)
	fmt.Println("| plugin | ADD p50 | ADD p99 | ADD mean | ADD CPU mean (user+sys, incl. IPAM child) | DEL p50 | DEL p99 |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for k, v := range vs {
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", v.name, ms(pct(add[k], .5)), ms(pct(add[k], .99)), ms(mean(add[k])), ms(mean(addCPU[k])), ms(pct(del[k], .5)), ms(pct(del[k], .99)))
	}
	fmt.Printf("\n%d concurrent ADDs (separate pod namespaces), %d rounds per plugin, ms. CPU per ADD is\n", len(netnses), *rounds)
	fmt.Printf("user+sys of the ADD processes (and their IPAM children) of a round / %d; floor = %d x CPU per\n", len(netnses), len(netnses))
	fmt.Printf("ADD / %d cores: the p99 this plugin cannot beat on this machine even when idle.\n\n", runtime.NumCPU())
	fmt.Println("| plugin | ADD p50 | ADD p99 | ADD max | CPU per ADD | CPU floor of the burst | errors |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, v := range vs {
		var all []time.Duration
		var cpu time.Duration
		errs := 0
		for r := 0; r < *rounds; r++ {
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_CHILDREN, &before)
			lat := make([]time.Duration, len(netnses))
			fail := make([]error, len(netnses))
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, p := range netnses {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					lat[i], fail[i] = call(*bin, v, "ADD", fmt.Sprintf("conc-%d-%d", r, i), p)
				}()
			}
			close(start)
			wg.Wait()
			syscall.Getrusage(syscall.RUSAGE_CHILDREN, &after)
			cpu += time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			for i, e := range fail {
				if e != nil {
					errs++
					fmt.Fprintln(os.Stderr, e)
				} else {
					all = append(all, lat[i])
				}
			}
			for i, p := range netnses {
				if _, err := call(*bin, v, "DEL", fmt.Sprintf("conc-%d-%d", r, i), p); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
			}
		}
		perADD := cpu / time.Duration(*rounds*len(netnses))
		floor := perADD * time.Duration(len(netnses)) / time.Duration(runtime.NumCPU())
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %d |\n", v.name, ms(pct(all, .5)), ms(pct(all, .99)), ms(pct(all, 1)), ms(perADD), ms(floor), errs)
	}
}
GO
(cd "$TMP/driver" && CGO_ENABLED=0 GOFLAGS= go build -o "$TMP/cnibench" .)

pods=$(printf "/var/run/netns/%s," "${PODS[@]}")
echo "## CNI benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), $(go env GOVERSION))"
echo
echo "Command: \`CNI_ONLY=${CNI_ONLY:-0} scripts/bench/cni.sh $N\` (C=$C, ROUNDS=$ROUNDS, binary $(du -h "$BIN" | cut -f1)); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [ "$N" -gt 0 ]; then
	ip netns exec "$NODE" "$TMP/cnibench" -bin "$TMP/bin" -tmp "$TMP" -n "$N" -rounds "$ROUNDS" -pods "${pods%,}"
fi
echo
echo "Package init of the binary (GODEBUG=inittrace=1, CNI_COMMAND=VERSION, 20 runs), and the CPU of a"
echo "bare VERSION call (process start + init; perf stat if present):"
echo
for i in $(seq 1 20); do
	GODEBUG=inittrace=1 CNI_COMMAND=VERSION "$TMP/bin/patronus-cni" 2>&1 >/dev/null | awk '/^init /{print $2, $5}'
done >"$TMP/inittrace"
awk '{t+=$2} END {printf "- total init (clock), mean of 20 runs: %.2f ms\n", t/20}' "$TMP/inittrace"
echo "- largest packages (mean ms per run):"
awk '{s[$1]+=$2} END {for (p in s) printf "%.3f %s\n", s[p]/20, p}' "$TMP/inittrace" | sort -rn | head -8 | awk '{printf "  - %s: %s ms\n", $2, $1}'
if command -v perf >/dev/null; then
	for b in "$TMP/bin/patronus-cni" "$TMP/bin/bridge"; do
		perf stat -r 20 -x, -e task-clock env CNI_COMMAND=VERSION "$b" </dev/null 2>&1 >/dev/null |
			awk -F, -v b="$(basename "$b")" '/task-clock/ {printf "- %s VERSION: %.2f ms CPU\n", b, $1}'
	done
fi

[ "${VARIANTS:-1}" = 1 ] || exit 0
# Start-up cost of the builds (see the header).
variant() { # name main.go-content
	printf '%s\n' "$2" >"$TMP/main-$1.go"
	printf '{"Replace":{"%s/main.go":"%s/main-%s.go"}}' "$PWD" "$TMP" "$1" >"$TMP/overlay-$1.json"
	mkdir -p "$TMP/v-$1"
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -overlay "$TMP/overlay-$1.json" -o "$TMP/v-$1/patronus-cni" .
}
echo "cni.sh: building the start-up variants" >&2
variant cnionly 'package main

import "github.com/patronus/patronus/cni"

func main() { cni.Main() }'
mkdir -p "$TMP/v-shipped" && cp "$BIN" "$TMP/v-shipped/patronus-cni"
builds="shipped cnionly"
if [ -n "${BASELINE_BIN:-}" ]; then
	mkdir -p "$TMP/v-baseline" && cp "$BASELINE_BIN" "$TMP/v-baseline/patronus-cni"
	builds="baseline shipped cnionly"
fi
echo
echo "Start-up of the builds run as patronus-cni, CNI_COMMAND=VERSION (inits and bytes: exact; clock: median"
echo "of 21 runs of the sum of GODEBUG=inittrace=1 clock, the builds interleaved; CPU: perf stat task-clock, mean of 30):"
echo
echo "| build | size | packages with init work | bytes allocated at init | init clock (median) | CPU of the whole VERSION call |"
echo "|---|---|---|---|---|---|"
for i in $(seq 21); do
	for v in $builds; do
		GODEBUG=inittrace=1 CNI_COMMAND=VERSION "$TMP/v-$v/patronus-cni" 2>&1 >/dev/null | awk -v v="$v" '/^init /{t+=$5} END {print v, t}'
	done
done >"$TMP/clocks"
for v in $builds; do
	b=$TMP/v-$v/patronus-cni
	read -r inits bytes < <(GODEBUG=inittrace=1 CNI_COMMAND=VERSION "$b" 2>&1 >/dev/null | awk '/^init /{n++; b+=$8} END {print n, b}')
	clock=$(awk -v v="$v" '$1 == v {print $2}' "$TMP/clocks" | sort -n | sed -n 11p)
	cpu=-
	if command -v perf >/dev/null; then
		cpu=$(perf stat -r 30 -x, -e task-clock env CNI_COMMAND=VERSION "$b" </dev/null 2>&1 >/dev/null | awk -F, '/task-clock/ {printf "%.2f ms", $1}')
	fi
	echo "| $v | $(du -h "$b" | cut -f1) | $inits | $bytes | $clock ms | $cpu |"
done
