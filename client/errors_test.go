package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// statusServer answers each RPC with the error its test names.
type statusServer struct {
	mlskeyv1.UnimplementedKeyServiceServer
	err error
}

func (s *statusServer) GetKey(context.Context, *mlskeyv1.GetKeyRequest) (*mlskeyv1.Key, error) {
	return nil, s.err
}

func (s *statusServer) OpenWelcome(ctx context.Context, _ *mlskeyv1.OpenWelcomeRequest) (*mlskeyv1.OpenWelcomeResponse, error) {
	// Blocks until the caller's deadline: the daemon answers only when
	// the client gives up.
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func TestTypedErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		kind error
	}{
		{status.Error(codes.NotFound, `id: key "k" not found`), ErrNotFound},
		{status.Error(codes.FailedPrecondition, `key_id: key "k" is consumed: key is not active`), ErrConsumed},
		{status.Error(codes.FailedPrecondition, "welcome: the init key of KeyPackage ab was already used"), ErrConsumed},
		{status.Error(codes.PermissionDenied, "label: policy does not allow"), ErrPermissionDenied},
		{status.Error(codes.Unauthenticated, "no peer credentials"), ErrPermissionDenied},
		{status.Error(codes.Unavailable, "device: lost"), ErrUnavailable},
		{status.Error(codes.FailedPrecondition, "policy"), nil},
	} {
		sock := serve(t, &statusServer{err: tc.err}, "mlskeyd-client")
		c, err := Dial(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetKey(context.Background(), &mlskeyv1.GetKeyRequest{Id: "k"})
		c.Close()
		for _, k := range []error{ErrNotFound, ErrConsumed, ErrPermissionDenied, ErrUnavailable} {
			if errors.Is(err, k) != (k == tc.kind) {
				t.Errorf("%v: errors.Is(%v) = %v", tc.err, k, !(k == tc.kind))
			}
		}
		// The status, and the text callers already print, are unchanged.
		if status.Code(err) != status.Code(tc.err) || err.Error() != tc.err.Error() {
			t.Errorf("typed error %q (%v), want %q", err, status.Code(err), tc.err)
		}
		var e *Error
		if !errors.As(err, &e) || e.Message() != status.Convert(tc.err).Message() {
			t.Errorf("%v: not an *Error with the daemon's message", err)
		}
	}
}

func TestUnreachableDaemonIsUnavailable(t *testing.T) {
	c, err := Dial(context.Background(), "/nonexistent/mlskeyd.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.GetKey(context.Background(), &mlskeyv1.GetKeyRequest{Id: "k"})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GetKey without a daemon: %v", err)
	}
}

func TestCallTimeout(t *testing.T) {
	sock := serve(t, &statusServer{}, "mlskeyd-client")
	c, err := Dial(context.Background(), sock, CallTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Without CallTimeout this call would never return.
	_, err = c.OpenWelcome(context.Background(), &mlskeyv1.OpenWelcomeRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("OpenWelcome on a daemon that does not answer: %v", err)
	}
	// A deadline of the caller's own is kept.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.OpenWelcome(ctx, &mlskeyv1.OpenWelcomeRequest{})
	if status.Code(err) != codes.Canceled || !strings.Contains(err.Error(), "cancel") {
		t.Fatalf("cancelled call: %v", err)
	}
}
