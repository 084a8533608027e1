package cni

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
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
