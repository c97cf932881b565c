package client

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

type fakeServer struct {
	mlskeyv1.UnimplementedKeyServiceServer
	nkeys int
}

func (s *fakeServer) SignWithLabel(_ context.Context, r *mlskeyv1.SignWithLabelRequest) (*mlskeyv1.SignWithLabelResponse, error) {
	if r.GetKeyId() != "k1" {
		return nil, status.Errorf(codes.NotFound, "key %q not found", r.GetKeyId())
	}
	sig := append([]byte(r.GetLabel()+"|"), r.GetContent()...)
	return &mlskeyv1.SignWithLabelResponse{Signature: sig}, nil
}

// ListKeys serves s.nkeys keys, three per page, and checks that the filters
// are passed on every page.
func (s *fakeServer) ListKeys(_ context.Context, r *mlskeyv1.ListKeysRequest) (*mlskeyv1.ListKeysResponse, error) {
	if r.GetRole() != mlskeyv1.KeyRole_KEY_ROLE_INIT || r.GetCipherSuite() != 3 {
		return nil, status.Error(codes.InvalidArgument, "filters lost")
	}
	start := 0
	if r.GetPageToken() != "" {
		var err error
		if start, err = strconv.Atoi(r.GetPageToken()); err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad token")
		}
	}
	resp := &mlskeyv1.ListKeysResponse{}
	for i := start; i < s.nkeys && i < start+3; i++ {
		resp.Keys = append(resp.Keys, &mlskeyv1.Key{Id: fmt.Sprint("k", i)})
	}
	if start+3 < s.nkeys {
		resp.NextPageToken = strconv.Itoa(start + 3)
	}
	return resp, nil
}

// serve starts fake on a Unix socket in a fresh directory named dirName and
// returns the socket path.
func serve(t *testing.T, fake mlskeyv1.KeyServiceServer, dirName string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", dirName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	mlskeyv1.RegisterKeyServiceServer(srv, fake)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return sock
}

func TestDefaultSocket(t *testing.T) {
	t.Setenv(SocketEnv, "")
	if got := DefaultSocket(); got != "/run/mlskeyd/mlskeyd.sock" {
		t.Errorf("DefaultSocket() = %q", got)
	}
	t.Setenv(SocketEnv, "/tmp/x.sock")
	if got := DefaultSocket(); got != "/tmp/x.sock" {
		t.Errorf("DefaultSocket() with %s set = %q", SocketEnv, got)
	}
}

func TestSign(t *testing.T) {
	// A directory name with characters that URLs treat specially.
	sock := serve(t, &fakeServer{}, "mlskeyd client %20?#")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sig, err := c.Sign(ctx, "k1", "FramedContentTBS", []byte("abc"))
	if err != nil {
		t.Fatal(err)
	}
	if string(sig) != "FramedContentTBS|abc" {
		t.Errorf("signature = %q", sig)
	}
	_, err = c.Sign(ctx, "nope", "FramedContentTBS", nil)
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown key: err = %v, want NotFound", err)
	}
}

func TestDialRelativePath(t *testing.T) {
	sock := serve(t, &fakeServer{}, "mlskeyd-client")
	t.Chdir(filepath.Dir(sock))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "s.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The path was made absolute when dialing: changing directory now
	// must not matter.
	t.Chdir(os.TempDir())
	if _, err := c.Sign(ctx, "k1", "FramedContentTBS", nil); err != nil {
		t.Fatal(err)
	}
}

func TestDialErrors(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := Dial(ctx, ""); err == nil {
		t.Error("Dial with an empty path succeeded")
	}
	cancel()
	if _, err := Dial(ctx, "/tmp/x.sock"); err == nil {
		t.Error("Dial with a canceled context succeeded")
	}

	// No daemon: Dial succeeds, the first call fails with Unavailable.
	c, err := Dial(context.Background(), filepath.Join(t.TempDir(), "absent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.GetInfo(ctx, &mlskeyv1.GetInfoRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetInfo without a daemon: err = %v, want Unavailable", err)
	}
}

func TestListAllKeys(t *testing.T) {
	for _, n := range []int{0, 1, 3, 7} {
		sock := serve(t, &fakeServer{nkeys: n}, "mlskeyd-client")
		c, err := Dial(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		req := &mlskeyv1.ListKeysRequest{Role: mlskeyv1.KeyRole_KEY_ROLE_INIT, CipherSuite: 3, PageToken: "ignored"}
		keys, err := c.ListAllKeys(context.Background(), req)
		c.Close()
		if err != nil {
			t.Fatalf("%d keys: %v", n, err)
		}
		if len(keys) != n {
			t.Fatalf("got %d keys, want %d", len(keys), n)
		}
		for i, k := range keys {
			if k.GetId() != fmt.Sprint("k", i) {
				t.Errorf("key %d: id %q", i, k.GetId())
			}
		}
		if req.GetPageToken() != "ignored" || req.GetPageSize() != 0 {
			t.Error("ListAllKeys modified its request")
		}
	}
}

type loopingServer struct {
	mlskeyv1.UnimplementedKeyServiceServer
}

func (loopingServer) ListKeys(context.Context, *mlskeyv1.ListKeysRequest) (*mlskeyv1.ListKeysResponse, error) {
	return &mlskeyv1.ListKeysResponse{Keys: []*mlskeyv1.Key{{Id: "x"}}, NextPageToken: "same"}, nil
}

func TestListAllKeysLoop(t *testing.T) {
	sock := serve(t, loopingServer{}, "mlskeyd-client")
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ListAllKeys(context.Background(), nil); err == nil {
		t.Error("ListAllKeys accepted a repeated page token")
	}
}
