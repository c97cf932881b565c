package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Listen opens the metrics listener: HOST:PORT for TCP, or unix:PATH (or an
// absolute PATH) for a Unix socket, created with mode 0660 so that a
// scraper's proxy in the daemon's group can read it. A stale socket left
// by a crashed daemon is replaced.
func Listen(addr string) (net.Listener, error) {
	path, isUnix := strings.CutPrefix(addr, "unix:")
	if !isUnix && strings.HasPrefix(addr, "/") {
		path, isUnix = addr, true
	}
	if !isUnix {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--metrics-listen %q: want HOST:PORT (e.g. 127.0.0.1:9464) or unix:PATH", addr)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen: %w", err)
		}
		return l, nil
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("--metrics-listen %q: the socket path must be absolute", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("--metrics-listen: %s exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("--metrics-listen: something is serving on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--metrics-listen: remove stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	return l, nil
}

// Serve serves /metrics on l until the returned stop is called.
func (m *Metrics) Serve(l net.Listener, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}
}
