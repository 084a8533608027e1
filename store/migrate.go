package store

import (
	"context"
	"fmt"
	"strings"
)

// migrations are applied in order; migration i brings the schema to version i+1.
// Append only: a released migration is never edited (docs/CONTRACT.md, "schema versioned,
// migrations forward-only").
var migrations = []string{
	// 1: pods registered by the CNI plugin, enriched by the agent; a small key/value table.
	`CREATE TABLE pods (
		container_id  TEXT    NOT NULL,
		ifname        TEXT    NOT NULL,
		netns         TEXT    NOT NULL DEFAULT '',
		network       TEXT    NOT NULL DEFAULT '',
		namespace     TEXT    NOT NULL DEFAULT '',
		name          TEXT    NOT NULL DEFAULT '',
		uid           TEXT    NOT NULL DEFAULT '',
		host_veth     TEXT    NOT NULL DEFAULT '',
		ips           TEXT    NOT NULL DEFAULT '[]',
		qos_class     TEXT    NOT NULL DEFAULT '',
		created_at    INTEGER NOT NULL,
		labels        TEXT    NOT NULL DEFAULT '{}',
		annotations   TEXT    NOT NULL DEFAULT '{}',
		api_synced_at INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (container_id, ifname)
	);
	CREATE INDEX pods_by_name ON pods(namespace, name);
	CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
}

// SchemaVersion is the version this build writes.
func SchemaVersion() int { return len(migrations) }

func (db *DB) migrate(ctx context.Context) error {
	var v int
	if err := db.sql.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		if strings.Contains(err.Error(), "not a database") || strings.Contains(err.Error(), "malformed") {
			return fmt.Errorf("store: %s: %w: %v", db.path, ErrCorrupt, err)
		}
		return fmt.Errorf("store: read schema version of %s: %w", db.path, err)
	}
	if v > len(migrations) {
		return fmt.Errorf("store: %s has schema version %d, newer than this binary's %d: upgrade patronus", db.path, v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := db.sql.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("store: begin migration %d of %s: %w", i+1, db.path, err)
		}
		// Another process may have migrated while we waited for the write lock.
		var cur int
		if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&cur); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: read schema version of %s: %w", db.path, err)
		}
		if cur > i {
			tx.Rollback()
			i = cur - 1
			continue
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: migration %d of %s: %w", i+1, db.path, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, i+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: set schema version %d of %s: %w", i+1, db.path, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("store: commit migration %d of %s: %w", i+1, db.path, err)
		}
	}
	return nil
}
