package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Listen creates the daemon's Unix socket at path with the given mode and,
// when gid is not -1, group. The socket is bound under umask 0177, so it
// is never reachable by anyone but the daemon's user before it has its
// group and mode. A missing parent directory is created with mode 0700
// (0750 with a group, which then owns it too); an existing one must
// belong to the daemon's user or root and be writable by nobody else,
// since whoever can write to it can replace the socket. A socket left by
// a crashed daemon is replaced; one a live daemon answers on is refused.
func Listen(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err == nil {
		if err := checkSocketDir(dir, fi); err != nil {
			return nil, err
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		dirMode := fs.FileMode(0o700)
		if gid != -1 {
			dirMode = 0o750
		}
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return nil, fmt.Errorf("create socket directory: %w", err)
		}
		if gid != -1 {
			if err := os.Chown(dir, -1, gid); err != nil {
				return nil, fmt.Errorf("chown socket directory: %w", err)
			}
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another daemon is serving on %s", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("probe existing socket %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The umask is process-wide: files created by other goroutines in
	// this moment get a stricter mode, never a wider one.
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err == nil && afterBind != nil {
		afterBind(path)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if gid != -1 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket: %w", err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// afterBind, when set by a test, sees the socket right after bind.
var afterBind func(path string)

// checkSocketDir refuses a socket directory that someone other than the
// daemon's user (or root) owns or may write to.
func checkSocketDir(dir string, fi fs.FileInfo) error {
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %s: no owner information", dir)
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 {
		return fmt.Errorf("socket directory %s belongs to uid %d, not to the daemon's user (uid %d) or root", dir, st.Uid, euid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s has mode %04o: group or others could replace the socket (chmod go-w %s, or use a directory of its own)", dir, perm, dir)
	}
	return nil
}
