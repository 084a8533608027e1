package cni

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/store"
)

// withWriteLock runs f holding an exclusive flock on <database>.lock.
//
// SQLite's busy handler polls with sleeps of up to 100 ms, so 32 plugin processes that
// collide on the write lock wait far longer than the sub-millisecond each one holds it.
// Queueing the plugin's own writers on a flock lets the kernel wake the next one the
// moment the lock is released; writers that do not take it (the agent) are still
// serialised by SQLite itself.
func withWriteLock(database string, f func() error) error {
	lf, err := os.OpenFile(database+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("node database lock %s.lock: %w", database, err)
	}
	defer lf.Close() // closing releases the lock
	for {
		err = unix.Flock(int(lf.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s.lock: %w", database, err)
	}
	return f()
}

// walCheckpointBytes bounds the node database's WAL as the plugin leaves it.
//
// The plugin exits without closing the database (see Plugin.closeDB). When no other
// process (the agent) holds it open, each plugin process is the first connection and
// rebuilds the WAL index from the whole WAL, and a checkpoint's progress, which lives in
// that index, is lost with the process: SQLite's automatic checkpoint can then never
// restart the WAL, which grows without bound (measured here: 10 MB after 400 ADD+DEL,
// ADD CPU 6 -> 20 ms). So a writer that finds the WAL above this size truncates it.
// At ~12 KB per commit that is one truncating checkpoint per ~20 commits, and the
// recovery each open pays stays under a millisecond.
const walCheckpointBytes = 256 << 10

// trimWAL checkpoints and truncates the WAL if it grew past walCheckpointBytes. Callers
// hold the write lock, so concurrent plugins do not all checkpoint at once. A checkpoint
// that cannot complete (a reader in the way) is left to the next writer.
func trimWAL(db *store.DB) {
	fi, err := os.Stat(db.Path() + "-wal")
	if err != nil || fi.Size() < walCheckpointBytes {
		return
	}
	var busy, logFrames, checkpointed int
	_ = db.SQL().QueryRow(`PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logFrames, &checkpointed)
}
