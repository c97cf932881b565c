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
// when gid is not -1, group. A missing parent directory is created with
// mode 0700 (0750 with a group, which then owns it too), so the socket is
// never reachable by others in the moment between bind and chmod. A socket
// left by a crashed daemon is replaced; one a live daemon answers on is
// refused.
func Listen(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
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
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
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
