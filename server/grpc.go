package server

import (
	"context"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
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
//
// Server-streaming KeyService calls (CreateKeyPackagesStream) run through
// the same interceptors, adapted by streamCalls, so every guarantee of a
// unary call holds for them.
func NewGRPCServer(svc *Service, log *slog.Logger, aud *Auditor, outer ...grpc.UnaryServerInterceptor) (*grpc.Server, *health.Server) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chain := interceptors(svc, log, aud, outer)
	gs := grpc.NewServer(
		grpc.Creds(PeerCredentials{}),
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.MaxSendMsgSize(MaxResponseSize),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		grpc.ChainUnaryInterceptor(chain...),
		grpc.ChainStreamInterceptor(streamCalls(chain)),
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

// interceptors is the chain every KeyService call passes, outermost first.
func interceptors(svc *Service, log *slog.Logger, aud *Auditor, outer []grpc.UnaryServerInterceptor) []grpc.UnaryServerInterceptor {
	chain := append(append([]grpc.UnaryServerInterceptor(nil), outer...), logCalls(log), recoverPanics(log))
	if aud != nil {
		if aud.Logger == nil {
			aud.Logger = log
		}
		chain = append(chain, aud.interceptor())
	}
	return append(chain, authenticate(svc), startupGate(svc))
}

// streamCalls runs each server-streaming KeyService call through the
// unary interceptors in chain, the very code unary calls pass: caller
// identity, rate and in-flight limits, startup gate, one audit record,
// logging, metrics and panic recovery. It reads the call's one request
// first, as gRPC does for a unary call before its interceptors, so they
// see it; the handler then receives that request and the context the
// interceptors made. Streams of other services (health's Watch,
// reflection) pass through as before.
func streamCalls(chain []grpc.UnaryServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if !isKeyService(info.FullMethod) {
			return h(srv, ss)
		}
		if info.IsClientStream {
			// Each request would need the checks of a call; none exists.
			return status.Errorf(codes.Unimplemented, "%s: client streams are not served", info.FullMethod)
		}
		req, err := newRequest(info.FullMethod)
		if err != nil {
			return err
		}
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		uinfo := &grpc.UnaryServerInfo{Server: srv, FullMethod: info.FullMethod}
		ran := false
		call := func(ctx context.Context, _ any) (any, error) {
			ran = true
			return nil, h(srv, &readStream{ServerStream: ss, ctx: ctx, req: req})
		}
		for i := len(chain) - 1; i >= 0; i-- {
			ic, next := chain[i], call
			call = func(ctx context.Context, r any) (any, error) { return ic(ctx, r, uinfo, next) }
		}
		_, err = call(ss.Context(), req)
		if err == nil && !ran {
			// An interceptor answered in the handler's place, as the
			// startup gate does for GetInfo; a stream has no such answer.
			return status.Errorf(codes.Unavailable, "daemon: %s was not served", info.FullMethod)
		}
		return err
	}
}

// newRequest returns an empty request message of a KeyService method.
func newRequest(method string) (proto.Message, error) {
	name := protoreflect.Name(method[strings.LastIndex(method, "/")+1:])
	md := pb.File_mlskey_v1_mlskey_proto.Services().ByName("KeyService").Methods().ByName(name)
	if md == nil {
		return nil, status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: request type: %v", method, err)
	}
	return mt.New().Interface(), nil
}

// readStream is a server stream whose one request streamCalls has read
// already, with the context its interceptors made.
type readStream struct {
	grpc.ServerStream
	ctx context.Context
	req proto.Message
}

func (s *readStream) Context() context.Context { return s.ctx }

func (s *readStream) RecvMsg(m any) error {
	dst, ok := m.(proto.Message)
	switch {
	case s.req == nil:
		return io.EOF // a server stream has one request
	case !ok:
		return status.Errorf(codes.Internal, "request of type %T", m)
	}
	proto.Reset(dst)
	proto.Merge(dst, s.req)
	s.req = nil
	return nil
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
