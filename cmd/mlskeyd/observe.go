package main

import (
	"log/slog"

	"google.golang.org/grpc"

	"github.com/mlskeyd/mlskeyd/internal/version"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/metrics"
)

// observability is the daemon's metrics, when --metrics-listen asks for
// them; every method is a no-op without.
type observability struct {
	m     *metrics.Metrics
	close func()
}

func newObservability(cfg *settings, log *slog.Logger) (*observability, error) {
	addr := cfg.str("metrics-listen")
	if addr == "" {
		return &observability{}, nil
	}
	l, err := metrics.Listen(addr)
	if err != nil {
		return nil, err
	}
	m := metrics.New(version.String())
	log.Info("metrics", "listen", l.Addr().String(), "path", "/metrics")
	return &observability{m: m, close: m.Serve(l, log)}, nil
}

func (o *observability) stop() {
	if o.close != nil {
		o.close()
	}
}

// deviceObserver is what the device reports its operations to: nil (no
// observer at all) without metrics.
func (o *observability) deviceObserver() keystore.DeviceObserver {
	if o.m == nil {
		return nil
	}
	return o.m
}

func (o *observability) watchStore(s *keystore.Store) {
	if o.m != nil {
		o.m.WatchStore(s)
	}
}

func (o *observability) interceptors() []grpc.UnaryServerInterceptor {
	if o.m == nil {
		return nil
	}
	return []grpc.UnaryServerInterceptor{o.m.UnaryInterceptor()}
}

func (o *observability) auditWriteFailed() {
	if o.m != nil {
		o.m.AuditWriteFailed()
	}
}

func (o *observability) rateLimited() {
	if o.m != nil {
		o.m.RateLimited()
	}
}
