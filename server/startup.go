package server

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/mlskeyd/mlskeyd/keystore"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The daemon binds its socket before it opens the device, so that a
// supervisor or a client can tell "starting" from "dead": while the device
// is opened and the catalog reconciled (which takes a while on a large
// token or a slow HSM), health answers NOT_SERVING, GetInfo answers with
// device_state "starting" and the phase, and every other KeyService call
// UNAVAILABLE.

type startup struct {
	ready atomic.Bool
	phase atomic.Pointer[string]
}

// SetPhase says what a starting service is doing, for GetInfo.
func (s *Service) SetPhase(phase string) { s.boot.phase.Store(&phase) }

// Ready hands a starting service its store; calls are served from then on.
// It must be called once, before any call can need the store.
func (s *Service) Ready(store *keystore.Store) {
	s.store = store
	s.boot.ready.Store(true) // publishes s.store to the handlers
}

// Started reports whether the service has its store.
func (s *Service) Started() bool { return s.boot.ready.Load() }

// startupGate answers KeyService calls until the service is Ready.
func startupGate(svc *Service) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if svc.boot.ready.Load() || !isKeyService(info.FullMethod) {
			return h(ctx, req)
		}
		phase := "starting"
		if p := svc.boot.phase.Load(); p != nil {
			phase = *p
		}
		if info.FullMethod == pb.KeyService_GetInfo_FullMethodName {
			return &pb.GetInfoResponse{Version: svc.opts.Version, DeviceState: "starting", StartupPhase: phase}, nil
		}
		return nil, status.Errorf(codes.Unavailable, "daemon: starting (%s); try again when health reports SERVING", phase)
	}
}

func isKeyService(method string) bool {
	return strings.HasPrefix(method, "/"+pb.KeyService_ServiceDesc.ServiceName+"/")
}
