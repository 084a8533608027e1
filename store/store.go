// Package store is the node's embedded SQLite database, shared by the CNI plugin (which
// registers pods on ADD) and the agent (which matches them with their API objects).
//
// Many short-lived plugin processes write concurrently, so the database runs in WAL mode
// with a busy timeout and every write transaction takes the write lock up front
// (BEGIN IMMEDIATE), which avoids the SQLITE_BUSY upgrade deadlock of deferred
// transactions. The schema is versioned; migrations only move forward.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
)

// DefaultPath is where the database lives on a node (docs/CONTRACT.md).
const DefaultPath = "/var/lib/patronus/k8s-sdwan.db"

// busyTimeout bounds how long a writer waits for another writer. Fifty concurrent CNI
// ADDs each hold the lock for well under a millisecond, so this is generous.
const busyTimeout = 10 * time.Second

// ErrCorrupt is returned (wrapped) when the file exists but is not a usable database.
var ErrCorrupt = errors.New("database is corrupt or not a patronus database")

// DB is an open patronus database.
type DB struct {
	sql  *sql.DB
	path string
}

// Open opens (creating if needed) the database at path and brings its schema up to date.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("store: empty database path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory for %s: %w", path, err)
	}
	dsn := fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(ON)&_txlock=immediate",
		path, busyTimeout.Milliseconds())
	sqlDB, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db := &DB{sql: sqlDB, path: path}
	// While several processes open a new file at once (the first pods of a node), one of
	// them switching it to WAL can make another's first read fail with SQLITE_BUSY at once,
	// without the busy handler: that is retried, within the busy timeout.
	deadline := time.Now().Add(busyTimeout)
	for {
		err := db.migrate(ctx)
		if err == nil {
			return db, nil
		}
		if !isBusy(err) || time.Now().After(deadline) || ctx.Err() != nil {
			sqlDB.Close()
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// isBusy: err is SQLite's SQLITE_BUSY (any extended code).
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == 5 // SQLITE_BUSY
}

// Path is the file the database lives in.
func (db *DB) Path() string { return db.path }

// SQL exposes the handle for packages that keep their own tables (added by a migration).
func (db *DB) SQL() *sql.DB { return db.sql }

// Close closes the database.
func (db *DB) Close() error { return db.sql.Close() }

// Ping checks the database can be written, which is what STATUS must know: a read-only
// or full disk makes ADD fail.
func (db *DB) Ping(ctx context.Context) error {
	_, err := db.sql.ExecContext(ctx, `INSERT INTO kv(key, value) VALUES('_ping', '') ON CONFLICT(key) DO UPDATE SET value=excluded.value`)
	if err != nil {
		return fmt.Errorf("store: %s is not writable: %w", db.path, err)
	}
	return nil
}

// Get reads a value of the small key/value table; ok is false when the key is absent.
func (db *DB) Get(ctx context.Context, key string) (value string, ok bool, err error) {
	err = db.sql.QueryRowContext(ctx, `SELECT value FROM kv WHERE key = ?`, key).Scan(&value)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("store: get %q: %w", key, err)
	}
	return value, true, nil
}

// Set writes a value of the small key/value table.
func (db *DB) Set(ctx context.Context, key, value string) error {
	_, err := db.sql.ExecContext(ctx, `INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("store: set %q: %w", key, err)
	}
	return nil
}
