package server

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// socketServer serves svc with the daemon's interceptors and an audit log
// on a socket; stop stops it and returns the audit records.
func socketServer(t *testing.T, svc *Service) (cl *client.Client, stop func() []audit.Record) {
	t.Helper()
	dir := t.TempDir()
	alog, err := audit.Open(filepath.Join(dir, "audit.log"), audit.Options{Sync: audit.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	gs, _ := NewGRPCServer(svc, nil, &Auditor{Log: alog})
	l, err := Listen(filepath.Join(dir, "run", "mlskeyd.sock"), 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	cl, err = client.Dial(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() []audit.Record {
		if !stopped {
			stopped = true
			cl.Close()
			gs.Stop()
			alog.Close()
		}
		b, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
		if len(b) == 0 {
			return nil
		}
		return readRecords(t, b)
	}
	t.Cleanup(func() { stop() })
	return cl, stop
}

// collect makes a progress callback that records what it hears.
func collect(seen *[][2]int) func(done, total int) {
	return func(done, total int) { *seen = append(*seen, [2]int{done, total}) }
}

func wantProgress(t *testing.T, seen [][2]int, total int) {
	t.Helper()
	if len(seen) < 2 || seen[0] != [2]int{0, total} || seen[len(seen)-1] != [2]int{total, total} {
		t.Fatalf("progress %v: want 0/%d first, %d/%d last", seen, total, total, total)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i][0] <= seen[i-1][0] || seen[i][1] != total {
			t.Fatalf("progress %v: not growing towards %d", seen, total)
		}
	}
}

// TestCreateKeyPackagesStreamMatchesUnary: the streaming call, through the
// daemon's whole gRPC path, answers a request as the unary call does (in
// count and in refill mode), after progress events that grow to total,
// and is audited once as the unary call is.
func TestCreateKeyPackagesStreamMatchesUnary(t *testing.T) {
	e := env(t)
	cl, stop := socketServer(t, NewService(e.store, Options{}))
	ctx := context.Background()
	sig, err := cl.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		t.Fatal(err)
	}
	su, _ := mls.LookupSuite(1)
	const n = 25
	req := &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: n, SignatureKeyId: sig.Id, NoGrease: true,
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("stream")}}}
	unary, err := cl.CreateKeyPackages(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var seen [][2]int
	streamed, err := cl.CreateKeyPackagesWithProgress(ctx, req, collect(&seen))
	if err != nil {
		t.Fatal(err)
	}
	wantProgress(t, seen, 3*n) // two keys and a signature each
	if len(streamed.KeyPackages) != n || !proto.Equal(streamed.SignatureKey, unary.SignatureKey) || streamed.UnusedBefore != unary.UnusedBefore {
		t.Fatalf("streamed %d KeyPackages, signature key %v; unary %d, %v", len(streamed.KeyPackages), streamed.SignatureKey, len(unary.KeyPackages), unary.SignatureKey)
	}
	// The KeyPackages differ only in their fresh keys.
	shape := func(kp *pb.CreatedKeyPackage) *mls.KeyPackage {
		m, err := mls.UnmarshalMLSMessage(kp.KeyPackage)
		if err != nil || m.KeyPackage == nil {
			t.Fatalf("KeyPackage does not decode: %v", err)
		}
		if string(su.KeyPackageRef(m.KeyPackage.Marshal())) != string(kp.KeyPackageRef) {
			t.Fatal("KeyPackageRef does not match the KeyPackage")
		}
		k := *m.KeyPackage
		k.InitKey, k.LeafNode.EncryptionKey, k.Signature, k.LeafNode.Signature = nil, nil, nil, nil
		if lt := k.LeafNode.Lifetime; lt != nil {
			// From the time of the call: the same span.
			k.LeafNode.Lifetime = &mls.Lifetime{NotAfter: lt.NotAfter - lt.NotBefore}
		}
		return &k
	}
	for i, kp := range streamed.KeyPackages {
		u, s := shape(unary.KeyPackages[i]), shape(kp)
		if string(u.Marshal()) != string(s.Marshal()) {
			t.Fatalf("KeyPackage %d: streamed one differs from the unary one beyond its keys", i)
		}
		for _, id := range []string{kp.InitKeyId, kp.LeafEncryptionKeyId} {
			if r, err := e.store.Get(id); err != nil || r.State != keystore.StateActive {
				t.Fatalf("key %s of a streamed KeyPackage: %v %v", id, r, err)
			}
		}
	}

	// Refill mode: the first refill creates target KeyPackages, the second
	// none and says how many there were, for both calls alike.
	refill := func(identity string, stream bool) (*pb.CreateKeyPackagesResponse, [][2]int) {
		r := &pb.CreateKeyPackagesRequest{CipherSuite: 1, EnsureTarget: 4, EnsureMin: 2, SignatureKeyId: sig.Id,
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte(identity)}}}
		var seen [][2]int
		var resp *pb.CreateKeyPackagesResponse
		var err error
		if stream {
			resp, err = cl.CreateKeyPackagesWithProgress(ctx, r, collect(&seen))
		} else {
			resp, err = cl.CreateKeyPackages(ctx, r)
		}
		if err != nil {
			t.Fatal(err)
		}
		return resp, seen
	}
	for round, want := range [][2]int{{0, 4}, {4, 0}} {
		u, _ := refill("refill unary", false)
		s, seen := refill("refill stream", true)
		for _, r := range []*pb.CreateKeyPackagesResponse{u, s} {
			if int(r.UnusedBefore) != want[0] || len(r.KeyPackages) != want[1] {
				t.Fatalf("refill %d: %d before, %d created; want %v", round, r.UnusedBefore, len(r.KeyPackages), want)
			}
		}
		if want[1] > 0 {
			wantProgress(t, seen, 3*want[1])
		} else if len(seen) != 0 {
			t.Fatalf("a refill with nothing to do reported progress %v", seen)
		}
	}

	recs := stop()
	var unaryRec, streamRec *audit.Record
	for i, r := range recs {
		switch r.Operation {
		case "CreateKeyPackages":
			if unaryRec == nil {
				unaryRec = &recs[i]
			}
		case "CreateKeyPackagesStream":
			if streamRec == nil {
				streamRec = &recs[i]
			}
		}
	}
	if unaryRec == nil || streamRec == nil {
		t.Fatalf("audit records: %+v", recs)
	}
	if streamRec.Outcome != audit.OutcomeOK || streamRec.KeyID != sig.Id || len(streamRec.KeyIDs) != 2*n ||
		streamRec.UID != unaryRec.UID || streamRec.PID != unaryRec.PID || streamRec.Exe != unaryRec.Exe || len(unaryRec.KeyIDs) != 2*n {
		t.Fatalf("stream audit record %+v\nunary %+v", streamRec, unaryRec)
	}
}

// TestCreateKeyPackagesStreamDenied: a stream call the unary checks refuse
// is refused with the same code and audited as denied, and creates
// nothing: a non-admin's owner_uid, a caller without credentials, one over
// its in-flight limit, a daemon still starting.
func TestCreateKeyPackagesStreamDenied(t *testing.T) {
	e := env(t)
	svc := NewService(e.store, Options{})
	keys, _ := e.store.Count(keystore.Filter{}, nil)
	cl, stop := socketServer(t, svc)
	other := uint32(4242)
	req := &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 3, Credential: basicCred(), OwnerUid: &other}
	_, err := cl.CreateKeyPackagesWithProgress(context.Background(), req, func(int, int) { t.Error("progress of a denied call") })
	wantStatus(t, "owner_uid of a non-admin", err, codes.PermissionDenied)
	recs := stop()
	if len(recs) != 1 || recs[0].Operation != "CreateKeyPackagesStream" || recs[0].Outcome != audit.OutcomeDenied ||
		recs[0].Code != "PermissionDenied" || recs[0].UID != uint32(os.Getuid()) || recs[0].PID != int32(os.Getpid()) {
		t.Fatalf("audit records: %+v", recs)
	}

	// The other refusals come from the interceptors; they are run here on
	// a stream without a socket.
	caller := liveCaller(t, 4343)
	for range MaxInFlightPerUID {
		done, _ := svc.inflight.enter(4343)
		defer done()
	}
	starting := NewService(nil, Options{})
	for _, c := range []struct {
		what string
		svc  *Service
		ctx  context.Context
		code codes.Code
	}{
		{"no peer credentials", svc, context.Background(), codes.Unauthenticated},
		{"over the in-flight limit", svc, caller, codes.ResourceExhausted},
		{"while starting", starting, caller, codes.Unavailable},
	} {
		p := filepath.Join(t.TempDir(), "audit.log")
		alog, err := audit.Open(p, audit.Options{Sync: audit.SyncNever})
		if err != nil {
			t.Fatal(err)
		}
		err = runStream(c.ctx, c.svc, &Auditor{Log: alog}, nil, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 3, Credential: basicCred()})
		alog.Close()
		wantStatus(t, c.what, err, c.code)
		b, _ := os.ReadFile(p)
		recs := readRecords(t, b)
		want := audit.OutcomeDenied
		if c.code == codes.Unavailable {
			want = audit.OutcomeError
		}
		if len(recs) != 1 || recs[0].Operation != "CreateKeyPackagesStream" || recs[0].Outcome != want || recs[0].Code != c.code.String() {
			t.Fatalf("%s: audit records %+v", c.what, recs)
		}
	}
	if after, _ := e.store.Count(keystore.Filter{}, nil); after != keys {
		t.Fatalf("refused calls changed the catalog: %d keys before, %d after", keys, after)
	}
}

// fakeStream is the server side of a CreateKeyPackagesStream call
// without a socket: it holds the request and records what is sent.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	req  proto.Message
	mu   sync.Mutex
	sent []*pb.CreateKeyPackagesEvent
	// onSend, if set, sees each event before it is recorded.
	onSend func(*pb.CreateKeyPackagesEvent) error
}

func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (f *fakeStream) SendHeader(metadata.MD) error { return nil }
func (f *fakeStream) SetTrailer(metadata.MD)       {}
func (f *fakeStream) RecvMsg(m any) error {
	if f.req == nil {
		return errors.New("no more requests")
	}
	proto.Merge(m.(proto.Message), f.req)
	f.req = nil
	return nil
}
func (f *fakeStream) SendMsg(m any) error { return f.Send(m.(*pb.CreateKeyPackagesEvent)) }
func (f *fakeStream) Send(ev *pb.CreateKeyPackagesEvent) error {
	if f.onSend != nil {
		if err := f.onSend(ev); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, ev)
	return nil
}

// runStream runs one CreateKeyPackagesStream call through the daemon's
// interceptors and the generated handler, as the gRPC server does.
func runStream(ctx context.Context, svc *Service, aud *Auditor, onSend func(*pb.CreateKeyPackagesEvent) error, req *pb.CreateKeyPackagesRequest) error {
	var desc grpc.StreamDesc
	for _, d := range pb.KeyService_ServiceDesc.Streams {
		if d.StreamName == "CreateKeyPackagesStream" {
			desc = d
		}
	}
	info := &grpc.StreamServerInfo{FullMethod: pb.KeyService_CreateKeyPackagesStream_FullMethodName, IsServerStream: true}
	ss := &fakeStream{ctx: ctx, req: req, onSend: onSend}
	return streamCalls(interceptors(svc, slog.New(slog.DiscardHandler), aud, nil))(svc, ss, info, desc.Handler)
}

// TestCreateKeyPackagesStreamCancelled: a client that gives up once it has
// seen progress, early or at the very end, leaves no key in the catalog
// and no object on the token; the call is audited as cancelled.
func TestCreateKeyPackagesStreamCancelled(t *testing.T) {
	e := env(t)
	svc := NewService(e.store, Options{})
	ctx := liveCaller(t, uidCounter.Add(1))
	for _, at := range []string{"first", "last"} {
		t.Run(at, func(t *testing.T) {
			keys, _ := e.store.Count(keystore.Filter{}, nil)
			objects := tokenObjects(t, e.dir)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			onSend := func(ev *pb.CreateKeyPackagesEvent) error {
				p := ev.GetProgress()
				if p == nil {
					return nil
				}
				if (at == "first" && p.Done > 0) || p.Done == p.Total {
					cancel()
					return status.Error(codes.Canceled, "client gone")
				}
				return nil
			}
			err := runStream(ctx, svc, nil, onSend, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 20, Credential: basicCred()})
			wantStatus(t, "cancelled stream", err, codes.Canceled)
			if after, _ := e.store.Count(keystore.Filter{}, nil); after != keys {
				t.Errorf("catalog keys: %d before, %d after a cancelled stream", keys, after)
			}
			if after := tokenObjects(t, e.dir); after != objects {
				t.Errorf("token objects: %d before, %d after a cancelled stream", objects, after)
			}
		})
	}
}

// TestStreamPanicRecovered: a panic in a stream handler is INTERNAL, as in
// a unary one, and the daemon goes on; the outer interceptors (the
// metrics) see the call with that code.
func TestStreamPanicRecovered(t *testing.T) {
	e := env(t)
	info := &grpc.StreamServerInfo{FullMethod: pb.KeyService_CreateKeyPackagesStream_FullMethodName, IsServerStream: true}
	ss := &fakeStream{ctx: liveCaller(t, 0), req: &pb.CreateKeyPackagesRequest{}}
	var seen []string
	metrics := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		seen = append(seen, info.FullMethod+" "+status.Code(err).String())
		return resp, err
	}
	chain := interceptors(e.svc, slog.New(slog.DiscardHandler), nil, []grpc.UnaryServerInterceptor{metrics})
	err := streamCalls(chain)(e.svc, ss, info, func(any, grpc.ServerStream) error { panic("boom") })
	wantStatus(t, "panicking stream handler", err, codes.Internal)
	if want := pb.KeyService_CreateKeyPackagesStream_FullMethodName + " Internal"; len(seen) != 1 || seen[0] != want {
		t.Fatalf("outer interceptor saw %q, want %q", seen, want)
	}
}

// TestHealthAndReflectionStreams: the health service's Watch and server
// reflection, both streams, still answer anyone on the socket.
func TestHealthAndReflectionStreams(t *testing.T) {
	e := env(t)
	cl, _ := socketServer(t, NewService(e.store, Options{}))
	ctx := context.Background()
	w, err := healthpb.NewHealthClient(cl.Conn()).Watch(ctx, &healthpb.HealthCheckRequest{Service: pb.KeyService_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Watch: %v %v", r, err)
	}
	rs, err := reflectionpb.NewServerReflectionClient(cl.Conn()).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !strings.Contains(strings.Join(names, " "), pb.KeyService_ServiceDesc.ServiceName) {
		t.Fatalf("reflection lists %v", names)
	}
}

func tokenObjects(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".object") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// liveCaller is the context of a call from this process as uid.
func liveCaller(t *testing.T, uid uint32) context.Context {
	t.Helper()
	st, err := processStartTime(int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerInfo{UID: uid, PID: int32(os.Getpid()), StartTime: st}})
}
