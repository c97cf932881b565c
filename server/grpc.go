package server

import (
	"context"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// NewGRPCServer returns a gRPC server with the KeyService, the standard
// health service and server reflection (so grpcurl works), reading each
// caller's SO_PEERCRED, logging every call without its payload and turning
// a panic in a handler into INTERNAL instead of a dead daemon.
//
// With an Auditor, every KeyService call is recorded in the audit log,
// denied ones included; authentication runs inside it so that refused
// callers are recorded too. The outer interceptors (the metrics) run
// before all of these and so see every call, refused ones included.
func NewGRPCServer(svc *Service, log *slog.Logger, aud *Auditor, outer ...grpc.UnaryServerInterceptor) (*grpc.Server, *health.Server) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chain := append(append([]grpc.UnaryServerInterceptor(nil), outer...), logCalls(log), recoverPanics(log))
	if aud != nil {
		if aud.Logger == nil {
			aud.Logger = log
		}
		chain = append(chain, aud.interceptor())
	}
	chain = append(chain, authenticate(svc), startupGate(svc))
	gs := grpc.NewServer(
		grpc.Creds(PeerCredentials{}),
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.MaxSendMsgSize(MaxResponseSize),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		grpc.ChainUnaryInterceptor(chain...),
		// Stop returns only when every handler has, so the daemon closes
		// the device and the audit log after the last call used them.
		grpc.WaitForHandlers(true),
	)
	pb.RegisterKeyServiceServer(gs, svc)
	hs := health.NewServer()
	st := healthpb.HealthCheckResponse_SERVING
	if !svc.Started() {
		st = healthpb.HealthCheckResponse_NOT_SERVING // until Ready and the device watch
	}
	hs.SetServingStatus("", st)
	hs.SetServingStatus(pb.KeyService_ServiceDesc.ServiceName, st)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return gs, hs
}

func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		if err == nil && !log.Enabled(ctx, slog.LevelDebug) {
			return resp, err // spares every successful call the attributes
		}
		attrs := []any{"method", info.FullMethod, "code", status.Code(err).String(), "duration", time.Since(start)}
		if p, ok := PeerFromContext(ctx); ok {
			attrs = append(attrs, "uid", p.UID, "pid", p.PID)
		}
		if err != nil {
			// Status messages name fields and device return codes; they
			// never carry key material or request content.
			attrs = append(attrs, "error", status.Convert(err).Message())
			// A device failure is the operator's business; a caller's
			// mistake is not.
			switch status.Code(err) {
			case codes.Unavailable, codes.Internal:
				log.Warn("call failed", attrs...)
			default:
				log.Info("call failed", attrs...)
			}
		} else {
			log.Debug("call", attrs...)
		}
		return resp, err
	}
}

// authenticate admits KeyService calls only from a caller whose process is
// still the one that connected, and within its rate limit. Health and
// reflection stay open to anyone who can reach the socket.
func authenticate(svc *Service) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if !isKeyService(info.FullMethod) {
			return h(ctx, req)
		}
		p, ok := PeerFromContext(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "caller: no peer credentials")
		}
		if !p.Alive() {
			return nil, status.Errorf(codes.Unauthenticated, "caller: process %d that opened this connection is gone", p.PID)
		}
		if !svc.pol().limit.allow(p.UID) {
			if svc.opts.OnRateLimited != nil {
				svc.opts.OnRateLimited()
			}
			return nil, status.Errorf(codes.ResourceExhausted, "caller: uid %d is over its rate limit", p.UID)
		}
		done, ok := svc.inflight.enter(p.UID)
		if !ok {
			return nil, status.Errorf(codes.ResourceExhausted, "caller: uid %d already has %d calls in flight, the most allowed; retry when one has finished", p.UID, svc.inflight.max)
		}
		defer done()
		return h(ctx, req)
	}
}

func recoverPanics(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("handler panic", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return h(ctx, req)
	}
}

// inflight counts each uid's running KeyService calls: streams are bounded
// per connection, but a uid can open many connections.
type inflight struct {
	max   int
	mu    sync.Mutex
	calls map[uint32]int
}

func (f *inflight) enter(uid uint32) (done func(), ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls[uid] >= f.max {
		return nil, false
	}
	if f.calls == nil {
		f.calls = map[uint32]int{}
	}
	f.calls[uid]++
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.calls[uid]--; f.calls[uid] == 0 {
			delete(f.calls, uid)
		}
	}, true
}
