package probe

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patronus/patronus/paths"
)

// collector reads the monitor at scrape time, so removed paths disappear by themselves.
type collector struct {
	mon                          *paths.Monitor
	score, rtt, jitter, loss, up *prometheus.Desc
	sent, lost                   *prometheus.Desc
	podLatency                   *prometheus.Desc
	localCluster                 string
}

func newCollector(m *paths.Monitor, localCluster string) *collector {
	l := []string{"src", "dst", "path_id"}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, l, nil) }
	return &collector{mon: m, localCluster: localCluster,
		podLatency: prometheus.NewDesc("patronus_pod_latency_ms",
			"Round-trip time (smoothed probe RTT) of the path a QoS class's traffic to a cluster uses.",
			[]string{"src_cluster", "dst_cluster", "qos_class"}, nil),
		score:  d("patronus_path_score", "Path score 0-100 from latency, jitter, loss and L7 metrics."),
		rtt:    d("patronus_path_rtt_seconds", "Smoothed probe round-trip time (SRTT)."),
		jitter: d("patronus_path_jitter_seconds", "Smoothed variation between consecutive probe round trips."),
		loss:   d("patronus_path_loss_ratio", "Lost share of the recent probes (0-1)."),
		up:     d("patronus_path_up", "1 when the path answers probes, 0 when down or never answered."),
		sent:   d("patronus_path_probes_sent_total", "Probes sent on the path."),
		lost:   d("patronus_path_probes_lost_total", "Probes not answered within their timeout."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.score, c.rtt, c.jitter, c.loss, c.up, c.sent, c.lost, c.podLatency} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.mon.Snapshot(time.Now())
	latency := map[string]float64{}
	for _, p := range snap.Paths {
		latency[p.ID] = p.LatencyMs
	}
	if c.localCluster != "" {
		for _, s := range snap.Selections {
			// The plain classes only: pods with a max-latency share their class's label set.
			if s.PathID != "" && s.MaxLatencyMs == 0 {
				ch <- prometheus.MustNewConstMetric(c.podLatency, prometheus.GaugeValue, latency[s.PathID], c.localCluster, s.Dst, string(s.Class))
			}
		}
	}
	for _, p := range snap.Paths {
		lv := []string{p.Src, p.Dst, p.ID}
		up := 0.0
		if p.State == paths.StateUp {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.score, prometheus.GaugeValue, p.Score, lv...)
		ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, p.LatencyMs/1e3, lv...)
		ch <- prometheus.MustNewConstMetric(c.jitter, prometheus.GaugeValue, p.JitterMs/1e3, lv...)
		ch <- prometheus.MustNewConstMetric(c.loss, prometheus.GaugeValue, p.Loss, lv...)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, lv...)
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(p.Sent), lv...)
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(p.Lost), lv...)
	}
}
