package nodenet

import (
	"context"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricLostPods is the gauge of pods on this node still holding an address of a pod
// block the node lost (docs/CONTRACT.md): they keep addresses another node now routes,
// and must be recreated.
const MetricLostPods = "patronus_nodenet_lost_pods"

// LostPodsGauge is MetricLostPods read from status (a Controller's Status) at each
// scrape.
func LostPodsGauge(status func() Status) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricLostPods,
		Help: "Pods on this node still holding an address of a pod block this node lost to another node's claim (recreate them)."},
		func() float64 { return float64(len(status().Lost)) })
}

// refreshLost re-reads the node database for the pods of the blocks in Status().Lost:
// a pod deleted since (its CNI DEL removed it from the database) is no longer lost, and
// a block the node holds again is no longer lost. Level-based, like the rest of the
// reconcile, so the status and MetricLostPods follow the pods.
func (c *Controller) refreshLost(ctx context.Context) {
	st, _ := c.snapshot()
	if len(st.Lost) == 0 || c.o.DB == nil {
		return
	}
	ps, err := c.o.DB.ListPods(ctx)
	if err != nil {
		c.log.Warn("list pods of lost pod blocks", "err", err)
		return
	}
	var blocks []string
	var now []LostPod
	for _, l := range st.Lost {
		if b := l.Block.String(); !slices.Contains(blocks, b) && l.Block != st.Block {
			blocks = append(blocks, b)
			now = append(now, LostPods(ps, l.Block)...)
		}
	}
	if len(now) == len(st.Lost) {
		return
	}
	c.mu.Lock()
	c.status.Lost = now
	c.mu.Unlock()
	c.log.Info("pods of a lost pod block are gone", "before", len(st.Lost), "left", len(now))
}
