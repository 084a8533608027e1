package agent

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// ReasonInvalidQoSAnnotation is the reason of the Event emitted on a pod whose QoS
// annotation is invalid.
const ReasonInvalidQoSAnnotation = "InvalidQoSAnnotation"

// reconcilePod makes the database rows of pod key ("namespace/name") carry what the API
// says about the pod: UID, labels, annotations and the effective QoS class.
//
// Rows are the CNI plugin's: the agent never adds or removes them (the plugin's DEL and GC
// do), so a restart or an API outage cannot disturb a working pod. A row whose API object
// is gone keeps its last known state until the plugin removes it.
func (a *agent) reconcilePod(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // malformed key: nothing to retry
	}
	pod, err := a.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return err
	}
	cfg := a.config()

	if pod == nil {
		a.qosEvents.forget(ns, name)
		return nil
	}
	spec, errs := qos.Parse(pod.Annotations, cfg.DefaultQoSClass)
	a.reportQoS(pod, errs)

	// The rows come from the last database scan, which queued this key after it saw them;
	// a row deleted since then makes SetPodAPIState return ErrNotFound.
	for _, r := range a.rows.get(key) {
		// The runtime passes K8S_POD_UID; a row with another UID is an older incarnation
		// of a pod with the same name (its DEL has not come yet): leave it alone.
		if r.UID != "" && r.UID != string(pod.UID) {
			a.log.Debug("database row belongs to another pod incarnation", "pod", key, "rowUID", r.UID, "apiUID", pod.UID)
			continue
		}
		if upToDate(r, pod, spec.Class) {
			continue
		}
		err := a.db.SetPodAPIState(ctx, r.ContainerID, r.IfName, string(pod.UID), string(spec.Class), pod.Labels, pod.Annotations, time.Now())
		if errors.Is(err, store.ErrNotFound) {
			continue // removed by CNI DEL meanwhile
		}
		if err != nil {
			return err
		}
		a.rows.markSynced(key, r.ContainerID, r.IfName, string(pod.UID), string(spec.Class), pod.Labels, pod.Annotations)
		a.log.Info("pod matched with its API object", "pod", key, "container", r.ContainerID, "ifname", r.IfName,
			"qosClass", spec.Class, "ips", r.IPs)
	}
	return nil
}

func upToDate(r store.Pod, pod *corev1.Pod, class qos.Class) bool {
	return !r.APISyncedAt.IsZero() && r.UID == string(pod.UID) && r.QoSClass == string(class) &&
		maps.Equal(r.Labels, nonNilMap(pod.Labels)) && maps.Equal(r.Annotations, nonNilMap(pod.Annotations))
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// reportQoS emits one Warning Event per invalid annotation value, once per pod UID and
// distinct set of errors: the periodic resync must not flood the API with Events.
func (a *agent) reportQoS(pod *corev1.Pod, errs []*qos.AnnotationError) {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	if !a.qosEvents.changed(pod.Namespace, pod.Name, pod.UID, strings.Join(msgs, "\n")) {
		return
	}
	for _, e := range errs {
		a.metrics.qosErrors.Inc()
		a.log.Warn("invalid QoS annotation", "pod", pod.Namespace+"/"+pod.Name, "annotation", e.Annotation, "value", e.Value)
		a.recorder.Event(pod, corev1.EventTypeWarning, ReasonInvalidQoSAnnotation, e.Error())
	}
}

// eventDedup remembers, per pod, the QoS errors last reported.
type eventDedup struct {
	mu   sync.Mutex
	last map[string]string // "ns/name" -> uid + "\x00" + messages
}

func (d *eventDedup) changed(ns, name string, uid types.UID, msgs string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		d.last = map[string]string{}
	}
	k, v := ns+"/"+name, string(uid)+"\x00"+msgs
	old, ok := d.last[k]
	d.last[k] = v
	if msgs == "" {
		return false
	}
	return !ok || old != v
}

func (d *eventDedup) forget(ns, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.last, ns+"/"+name)
}

// pollStore scans the database for attachments the CNI plugin added, changed or removed
// and queues their pods. The plugin is a separate short-lived process, so polling a small
// table is the simplest reliable signal; the informer resync covers the rest.
func (a *agent) pollStore(ctx context.Context, sc *storeScanner) {
	defer sc.close()
	var snap snapshotState
	t := time.NewTicker(a.opts.StorePollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sc.scan(ctx)
		a.saveSnapshot(ctx, &snap)
	}
}

// storeScanner remembers what the last scan saw, to queue only what changed (and
// everything once per resync period).
type storeScanner struct {
	a        *agent
	enqueue  func(key string)
	known    map[string]string // container/ifname -> fingerprint (key, IPs, synced)
	lastFull time.Time

	// conn is a dedicated read connection whose PRAGMA data_version changes only when
	// another connection (a plugin process, or the agent's own writes) committed: an idle
	// node costs one tiny query per poll instead of decoding every row.
	conn        *sql.Conn
	lastVersion int64
}

func newStoreScanner(a *agent) *storeScanner {
	return &storeScanner{a: a, enqueue: a.pods.Enqueue, known: map[string]string{}, lastFull: time.Now(), lastVersion: -1}
}

func (sc *storeScanner) close() {
	if sc.conn != nil {
		sc.conn.Close()
		sc.conn = nil
	}
}

// changed reports whether the database may have changed since the last call (true when
// it cannot tell).
func (sc *storeScanner) changed(ctx context.Context) bool {
	if sc.conn == nil {
		c, err := sc.a.db.SQL().Conn(ctx)
		if err != nil {
			return true
		}
		sc.conn = c
	}
	var v int64
	if err := sc.conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		sc.close()
		return true
	}
	ch := v != sc.lastVersion
	sc.lastVersion = v
	return ch
}

func (sc *storeScanner) scan(ctx context.Context) {
	a := sc.a
	full := time.Since(sc.lastFull) >= a.opts.ResyncPeriod
	if !sc.changed(ctx) && !full {
		return
	}
	if full {
		sc.lastFull = time.Now()
	}
	rows, err := a.db.ListPods(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("cannot read the node database", "path", a.opts.DatabasePath, "err", err)
		}
		return
	}
	a.rows.replace(rows)
	a.metrics.podsManaged.Set(float64(len(rows)))
	now := make(map[string]string, len(rows))
	for _, r := range rows {
		if r.Namespace == "" || r.Name == "" {
			continue // not a Kubernetes pod (no K8S_POD_* in CNI_ARGS)
		}
		id, key := r.ContainerID+"/"+r.IfName, r.Namespace+"/"+r.Name
		// A repeated ADD replaces the row (new IPs, API state reset): that is a change too.
		fp := fmt.Sprintf("%s|%v|%t", key, r.IPs, r.APISyncedAt.IsZero())
		now[id] = fp
		if old, ok := sc.known[id]; !ok || old != fp || full {
			sc.enqueue(key)
		}
	}
	for id, fp := range sc.known {
		if _, ok := now[id]; !ok {
			sc.enqueue(strings.SplitN(fp, "|", 2)[0])
		}
	}
	sc.known = now
}

// rowIndex is the last scan's rows by pod key, so a reconcile does not read the whole
// table (a full resync would otherwise cost O(pods²)).
type rowIndex struct {
	mu    sync.RWMutex
	byKey map[string][]store.Pod
}

func (x *rowIndex) replace(rows []store.Pod) {
	m := make(map[string][]store.Pod, len(rows))
	for _, r := range rows {
		k := r.Namespace + "/" + r.Name
		m[k] = append(m[k], r)
	}
	x.mu.Lock()
	x.byKey = m
	x.mu.Unlock()
}

func (x *rowIndex) get(key string) []store.Pod {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.byKey[key])
}

// markSynced records a write the reconcile made, so the next reconcile of the same key
// before the next scan sees the row up to date.
func (x *rowIndex) markSynced(key, containerID, ifname, uid, class string, labels, annotations map[string]string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	rows := slices.Clone(x.byKey[key])
	for i := range rows {
		if rows[i].ContainerID == containerID && rows[i].IfName == ifname {
			rows[i].UID, rows[i].QoSClass, rows[i].APISyncedAt = uid, class, time.Now()
			rows[i].Labels, rows[i].Annotations = maps.Clone(nonNilMap(labels)), maps.Clone(nonNilMap(annotations))
		}
	}
	if x.byKey != nil {
		x.byKey[key] = rows
	}
}

// snapshotState is the last summary written to the database.
type snapshotState struct {
	last    string
	written time.Time
}

// saveSnapshot keeps localapi.Snapshot current in the database: written when it changes,
// and at least every minute so its UpdatedAt says how stale it is.
func (a *agent) saveSnapshot(ctx context.Context, st *snapshotState) {
	cfg := a.config()
	if cfg == nil {
		return
	}
	s := localapi.Snapshot{Node: a.opts.NodeName, ClusterID: cfg.ClusterID,
		NetworkPolicies: a.seen[kindNetworkPolicies].len(), Tunnels: []localapi.Tunnel{}}
	key, _ := json.Marshal(s)
	if string(key) == st.last && time.Since(st.written) < time.Minute {
		return
	}
	s.UpdatedAt = time.Now().UTC()
	b, _ := json.Marshal(s)
	if err := a.db.Set(ctx, localapi.SnapshotKey, string(b)); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("cannot save the status snapshot", "err", err)
		}
		return
	}
	st.last, st.written = string(key), time.Now()
}
