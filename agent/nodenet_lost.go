package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/patronus/patronus/nodenet"
)

// lostPodsGauge is patronus_nodenet_lost_pods: pods still holding addresses of a pod
// block this node lost (0 while nodenet does not run).
func (a *agent) lostPodsGauge() prometheus.Collector {
	return nodenet.LostPodsGauge(func() nodenet.Status {
		if c := a.nodeNet.ctrl.Load(); c != nil {
			return c.Status()
		}
		return nodenet.Status{}
	})
}
