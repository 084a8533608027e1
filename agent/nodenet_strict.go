package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/patronus/patronus/nodenet"
)

// strictDroppedCounter is patronus_nodenet_strict_dropped_packets_total: pod packets
// strict node encryption dropped (0 while nodenet does not run or strict is off).
func (a *agent) strictDroppedCounter() prometheus.Collector {
	return nodenet.StrictDroppedCounter(func() nodenet.Status {
		if c := a.nodeNet.ctrl.Load(); c != nil {
			return c.Status()
		}
		return nodenet.Status{}
	})
}
