package server

import (
	"context"
	"log/slog"

	"github.com/mlskeyd/mlskeyd/keystore"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// WatchDeviceHealth keeps the gRPC health service in step with the device:
// NOT_SERVING (for the whole server and for KeyService) while the device
// is gone or failed, SERVING while it is ready. It returns when ctx is
// done; the caller then shuts the health server down, which makes the
// status NOT_SERVING for good.
func WatchDeviceHealth(ctx context.Context, store *keystore.Store, hs *health.Server, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		changed := store.HealthChanged()
		h := store.Health()
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if h.Ready() {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if st != last {
			hs.SetServingStatus("", st)
			hs.SetServingStatus(pb.KeyService_ServiceDesc.ServiceName, st)
			if last != healthpb.HealthCheckResponse_UNKNOWN {
				log.Info("health", "status", st.String(), "device", string(h.State), "last_error", h.LastError)
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
