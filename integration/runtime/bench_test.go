package runtime

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPodSandboxThroughContainerd times a pod's network lifecycle as kubelet's runtime
// drives it: crictl runp (sandbox + CNI ADD) then stopp + rmp (CNI DEL), with the
// reference bridge plugin as the baseline and patronus-cni, same host-local IPAM, same
// node. Each crictl call includes crictl's own process start, equal for both.
//
//	go test -run '^$' -bench PodSandbox -benchtime 20x ./integration/runtime/
func BenchmarkPodSandboxThroughContainerd(b *testing.B) {
	tools := FindTools(b)
	reference := func(n *Node) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"reference","plugins":[{"type":"bridge","bridge":"cni-bridge0",
			"isGateway":true,"ipam":{"type":"host-local","subnet":"10.244.0.0/16","dataDir":%q}}]}`, n.IPAMDir)
	}
	for _, c := range []struct {
		name     string
		patronus bool
		conf     func(*Node) string
	}{
		{"reference-bridge", false, reference},
		{"patronus-cni", true, patronusConfList(b, tools)},
	} {
		b.Run(c.name, func(b *testing.B) {
			n := StartNode(b, NodeOptions{Tools: tools, Plugins: []string{"bridge", "host-local"}, PatronusCNI: c.patronus, ConfList: c.conf})
			// One pod first: the first sandbox also unpacks the pause image.
			n.RemovePod(b, n.RunPod(b, "bench", "warmup"))
			var run, remove time.Duration
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				p := n.RunPod(b, "bench", fmt.Sprintf("p%d", i))
				t1 := time.Now()
				n.RemovePod(b, p)
				run += t1.Sub(t0)
				remove += time.Since(t1)
			}
			b.ReportMetric(float64(run.Milliseconds())/float64(b.N), "runp-ms/op")
			b.ReportMetric(float64(remove.Milliseconds())/float64(b.N), "stopp+rmp-ms/op")
		})
	}
}
