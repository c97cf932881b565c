package audit

import "fmt"

// Reopen closes the live file and opens the file at the log's path again,
// creating it if it is gone. It is for rotation by another program
// (logrotate renames the live file, then signals the daemon): records
// written after Reopen go to the new file and the hash chain continues
// from the last record of the renamed one. The renamed files keep
// logrotate's names, which Files does not find; verify them by naming
// every file, oldest first. Rotation by copying and truncating
// (copytruncate) must not be used: the daemon's records would be cut.
//
// Appends wait while the file is switched. If the new file cannot be
// opened, Reopen returns the error and the next Append tries again (and
// fails, refusing the call under fail_closed, until it can).
func (l *Log) Reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.f != nil {
		if l.dirty {
			if err := l.repair(); err != nil {
				return err
			}
		}
		if err := l.f.Sync(); err != nil && l.opts.Sync == SyncAlways {
			return fmt.Errorf("audit: reopen: fsync %s: %w", l.path, err)
		}
		_ = l.f.Close()
		l.f = nil
	}
	if err := l.openLive(); err != nil {
		return fmt.Errorf("audit: reopen: %w", err)
	}
	return nil
}
