package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Pod is one attachment registered by the CNI plugin: a (container ID, ifname) pair.
// The Kubernetes fields (Labels, Annotations, APISyncedAt) are filled by the agent.
type Pod struct {
	ContainerID string
	IfName      string
	Netns       string
	Network     string // CNI network name
	Namespace   string // K8S_POD_NAMESPACE
	Name        string // K8S_POD_NAME
	UID         string // K8S_POD_UID
	HostVeth    string
	IPs         []netip.Prefix
	QoSClass    string
	CreatedAt   time.Time
	Labels      map[string]string
	Annotations map[string]string
	APISyncedAt time.Time // zero until the agent matched the pod with its API object
}

// ErrNotFound is returned when a row does not exist.
var ErrNotFound = errors.New("not found")

const podColumns = `container_id, ifname, netns, network, namespace, name, uid, host_veth, ips, qos_class, created_at, labels, annotations, api_synced_at`

// PutPod inserts or replaces the attachment (CNI ADD may be retried by the runtime).
func (db *DB) PutPod(ctx context.Context, p Pod) error {
	ips, err := json.Marshal(p.IPs)
	if err != nil {
		return fmt.Errorf("store: encode IPs of %s/%s: %w", p.ContainerID, p.IfName, err)
	}
	labels, _ := json.Marshal(nonNil(p.Labels))
	annotations, _ := json.Marshal(nonNil(p.Annotations))
	if p.CreatedAt.IsZero() {
		p.CreatedAt = time.Now()
	}
	_, err = db.sql.ExecContext(ctx, `INSERT OR REPLACE INTO pods(`+podColumns+`) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		p.ContainerID, p.IfName, p.Netns, p.Network, p.Namespace, p.Name, p.UID, p.HostVeth,
		string(ips), p.QoSClass, p.CreatedAt.UnixNano(), string(labels), string(annotations), unixNanoOrZero(p.APISyncedAt))
	if err != nil {
		return fmt.Errorf("store: register pod %s/%s (container %s): %w", p.Namespace, p.Name, p.ContainerID, err)
	}
	return nil
}

// DeletePod removes an attachment. Deleting one that does not exist is not an error
// (CNI DEL must be idempotent).
func (db *DB) DeletePod(ctx context.Context, containerID, ifname string) error {
	_, err := db.sql.ExecContext(ctx, `DELETE FROM pods WHERE container_id = ? AND ifname = ?`, containerID, ifname)
	if err != nil {
		return fmt.Errorf("store: unregister container %s/%s: %w", containerID, ifname, err)
	}
	return nil
}

// GetPod returns one attachment, or ErrNotFound.
func (db *DB) GetPod(ctx context.Context, containerID, ifname string) (Pod, error) {
	row := db.sql.QueryRowContext(ctx, `SELECT `+podColumns+` FROM pods WHERE container_id = ? AND ifname = ?`, containerID, ifname)
	p, err := scanPod(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Pod{}, fmt.Errorf("store: container %s/%s: %w", containerID, ifname, ErrNotFound)
	}
	return p, err
}

// ListPods returns every attachment, oldest first.
func (db *DB) ListPods(ctx context.Context) ([]Pod, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+podColumns+` FROM pods ORDER BY created_at, container_id, ifname`)
	if err != nil {
		return nil, fmt.Errorf("store: list pods: %w", err)
	}
	defer rows.Close()
	var out []Pod
	for rows.Next() {
		p, err := scanPod(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// CountPods returns how many attachments are registered.
func (db *DB) CountPods(ctx context.Context) (int, error) {
	var n int
	if err := db.sql.QueryRowContext(ctx, `SELECT count(*) FROM pods`).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count pods: %w", err)
	}
	return n, nil
}

// SetPodAPIState records what the agent learned from the pod's API object.
func (db *DB) SetPodAPIState(ctx context.Context, containerID, ifname, uid, qosClass string, labels, annotations map[string]string, at time.Time) error {
	l, _ := json.Marshal(nonNil(labels))
	a, _ := json.Marshal(nonNil(annotations))
	res, err := db.sql.ExecContext(ctx, `UPDATE pods SET uid = ?, qos_class = ?, labels = ?, annotations = ?, api_synced_at = ? WHERE container_id = ? AND ifname = ?`,
		uid, qosClass, string(l), string(a), unixNanoOrZero(at), containerID, ifname)
	if err != nil {
		return fmt.Errorf("store: update API state of %s/%s: %w", containerID, ifname, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: container %s/%s: %w", containerID, ifname, ErrNotFound)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanPod(s scanner) (Pod, error) {
	var p Pod
	var ips, labels, annotations string
	var created, synced int64
	if err := s.Scan(&p.ContainerID, &p.IfName, &p.Netns, &p.Network, &p.Namespace, &p.Name, &p.UID, &p.HostVeth,
		&ips, &p.QoSClass, &created, &labels, &annotations, &synced); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return p, err
		}
		return p, fmt.Errorf("store: read pod row: %w", err)
	}
	if err := json.Unmarshal([]byte(ips), &p.IPs); err != nil {
		return p, fmt.Errorf("store: pod %s/%s has malformed ips %q: %w", p.ContainerID, p.IfName, ips, err)
	}
	if err := json.Unmarshal([]byte(labels), &p.Labels); err != nil {
		return p, fmt.Errorf("store: pod %s/%s has malformed labels: %w", p.ContainerID, p.IfName, err)
	}
	if err := json.Unmarshal([]byte(annotations), &p.Annotations); err != nil {
		return p, fmt.Errorf("store: pod %s/%s has malformed annotations: %w", p.ContainerID, p.IfName, err)
	}
	p.CreatedAt = time.Unix(0, created)
	if synced != 0 {
		p.APISyncedAt = time.Unix(0, synced)
	}
	return p, nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
