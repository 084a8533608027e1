package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's own Prometheus metrics (docs/CONTRACT.md, "Metrics").
type metrics struct {
	reg         prometheus.Registerer
	collectors  []prometheus.Collector
	ready       prometheus.Gauge
	mcs         prometheus.Gauge
	podsManaged prometheus.Gauge
	objects     *prometheus.GaugeVec
	reconciles  *prometheus.CounterVec
	qosErrors   prometheus.Counter
	configStale prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "patronus_agent_ready",
			Help: "1 once the agent's Kubernetes caches have synced."}),
		mcs: prometheus.NewGauge(prometheus.GaugeOpts{Name: "patronus_agent_mcs_available",
			Help: "1 while the agent watches the MCS API (ServiceExport/ServiceImport CRDs installed)."}),
		podsManaged: prometheus.NewGauge(prometheus.GaugeOpts{Name: "patronus_agent_pods_managed",
			Help: "Pod attachments registered in the node database by the CNI plugin."}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "patronus_agent_objects",
			Help: "Kubernetes objects the agent sees, by kind."}, []string{"kind"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "patronus_agent_reconciles_total",
			Help: "Reconciles by controller and result (ok or error)."}, []string{"controller", "result"}),
		qosErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "patronus_agent_invalid_qos_annotations_total",
			Help: "Invalid pod QoS annotation values reported as Events."}),
		configStale: prometheus.NewGauge(prometheus.GaugeOpts{Name: "patronus_agent_config_stale",
			Help: "1 when the patronus-config ConfigMap differs from (or is no longer valid against) the configuration the agent started with."}),
	}
	m.reg = reg
	for _, c := range []prometheus.Collector{m.ready, m.mcs, m.podsManaged, m.objects, m.reconciles, m.qosErrors, m.configStale} {
		if err := reg.Register(c); err != nil {
			m.unregister()
			return nil, err
		}
		m.collectors = append(m.collectors, c)
	}
	return m, nil
}

// add registers one more collector (removed by unregister like the others).
func (m *metrics) add(c prometheus.Collector) error {
	if err := m.reg.Register(c); err != nil {
		return err
	}
	m.collectors = append(m.collectors, c)
	return nil
}

// unregister removes the agent's collectors, so a registry can outlive one Run (tests,
// or an embedding program restarting the agent).
func (m *metrics) unregister() {
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
	m.collectors = nil
}

func (m *metrics) result(controller string, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	m.reconciles.WithLabelValues(controller, r).Inc()
}
