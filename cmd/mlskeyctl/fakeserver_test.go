package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// fakeServer gives canned answers. Known keys: "sig-1" (suite 1, signature)
// and "init-1" (suite 1, init, last resort). The key "slow" makes
// SignWithLabel wait for the caller to give up.
type fakeServer struct {
	mlskeyv1.UnimplementedKeyServiceServer

	mu       sync.Mutex
	lastList []*mlskeyv1.ListKeysRequest
	lastKP   *mlskeyv1.CreateKeyPackagesRequest
	info     *mlskeyv1.GetInfoResponse // replaces GetInfo's answer when set
	// kpTimeLeft is the time the last CreateKeyPackages had before its
	// deadline (0: none).
	kpTimeLeft time.Duration
	deleted    []string
	nonces     [][]byte
	// started is closed when a "slow" call has started waiting.
	started chan struct{}
	// streams counts CreateKeyPackagesStream calls; noStream refuses them
	// as a daemon without the call; refill is how many KeyPackages a
	// refill creates.
	streams  int
	noStream bool
	refill   uint32
}

var created = timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC))

func sigKey(suite uint32) *mlskeyv1.Key {
	return &mlskeyv1.Key{
		Id:          "sig-1",
		CipherSuite: suite,
		Role:        mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE,
		PublicKey:   bytes.Repeat([]byte{0xab}, 32),
		Protection:  mlskeyv1.Protection_PROTECTION_HARDWARE,
		State:       mlskeyv1.KeyState_KEY_STATE_ACTIVE,
		CreatedAt:   created,
	}
}

func initKey() *mlskeyv1.Key {
	return &mlskeyv1.Key{
		Id:             "init-1",
		CipherSuite:    1,
		Role:           mlskeyv1.KeyRole_KEY_ROLE_INIT,
		PublicKey:      []byte{1, 2, 3},
		Protection:     mlskeyv1.Protection_PROTECTION_SEALED,
		State:          mlskeyv1.KeyState_KEY_STATE_CONSUMED,
		KeyPackageRef:  []byte{0xfe, 0xed},
		LastResort:     true,
		SignatureKeyId: "sig-1",
		CreatedAt:      created,
		RetiredAt:      created,
	}
}

func notFound(id string) error { return status.Errorf(codes.NotFound, "key %q not found", id) }

func (s *fakeServer) GetInfo(context.Context, *mlskeyv1.GetInfoRequest) (*mlskeyv1.GetInfoResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.info != nil {
		return s.info, nil
	}
	return &mlskeyv1.GetInfoResponse{
		Backend:        "fake",
		Device:         "test device",
		Version:        "0.0.0-test",
		InstallationId: "00112233445566778899aabbccddeeff",
		MissingKeys:    1,
		MissingKeyIds:  []string{"0190aa"},
		Suites: []*mlskeyv1.SuiteSupport{
			{CipherSuite: 1, Name: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", Signature: mlskeyv1.Protection_PROTECTION_HARDWARE, Init: mlskeyv1.Protection_PROTECTION_WRAPPED, LeafEncryption: mlskeyv1.Protection_PROTECTION_SEALED},
			{CipherSuite: 4, Init: mlskeyv1.Protection_PROTECTION_SEALED, LeafEncryption: mlskeyv1.Protection_PROTECTION_SEALED},
		},
	}, nil
}

func (s *fakeServer) CreateSignatureKey(_ context.Context, r *mlskeyv1.CreateSignatureKeyRequest) (*mlskeyv1.Key, error) {
	if r.GetCipherSuite() > 7 {
		return nil, status.Errorf(codes.InvalidArgument, "cipher suite %d is not supported\nby this device", r.GetCipherSuite())
	}
	return sigKey(r.GetCipherSuite()), nil
}

func (s *fakeServer) GetKey(_ context.Context, r *mlskeyv1.GetKeyRequest) (*mlskeyv1.Key, error) {
	switch r.GetId() {
	case "sig-1":
		return sigKey(1), nil
	case "init-1":
		return initKey(), nil
	}
	return nil, notFound(r.GetId())
}

func (s *fakeServer) DeleteKey(_ context.Context, r *mlskeyv1.DeleteKeyRequest) (*mlskeyv1.Key, error) {
	if r.GetId() != "sig-1" {
		return nil, notFound(r.GetId())
	}
	s.mu.Lock()
	s.deleted = append(s.deleted, r.GetId())
	s.mu.Unlock()
	k := sigKey(1)
	k.State = mlskeyv1.KeyState_KEY_STATE_DESTROYED
	k.RetiredAt = created
	return k, nil
}

// ListKeys serves sig-1, init-1 and a third key, one per page.
func (s *fakeServer) ListKeys(_ context.Context, r *mlskeyv1.ListKeysRequest) (*mlskeyv1.ListKeysResponse, error) {
	s.mu.Lock()
	s.lastList = append(s.lastList, proto.Clone(r).(*mlskeyv1.ListKeysRequest))
	s.mu.Unlock()
	leaf := &mlskeyv1.Key{Id: "leaf-1", CipherSuite: 1, Role: mlskeyv1.KeyRole_KEY_ROLE_LEAF_ENCRYPTION,
		PublicKey: []byte{9}, Protection: mlskeyv1.Protection_PROTECTION_WRAPPED, State: mlskeyv1.KeyState_KEY_STATE_ACTIVE,
		KeyPackageRef: []byte{0xfe, 0xed}, SignatureKeyId: "sig-1", Owner: "uid:1000"}
	all := []*mlskeyv1.Key{sigKey(1), initKey(), leaf}
	i := 0
	if t := r.GetPageToken(); t != "" {
		var err error
		if i, err = strconv.Atoi(t); err != nil || i >= len(all) {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
	}
	resp := &mlskeyv1.ListKeysResponse{Keys: all[i : i+1]}
	if i+1 < len(all) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// fakeSignature is what the fake server signs.
func fakeSignature(label string, content []byte) []byte {
	h := sha256.Sum256(append([]byte("MLS 1.0 "+label+"\x00"), content...))
	return h[:]
}

func (s *fakeServer) SignWithLabel(ctx context.Context, r *mlskeyv1.SignWithLabelRequest) (*mlskeyv1.SignWithLabelResponse, error) {
	switch r.GetKeyId() {
	case "sig-1":
		return &mlskeyv1.SignWithLabelResponse{Signature: fakeSignature(r.GetLabel(), r.GetContent())}, nil
	case "slow":
		return nil, s.waitForCaller(ctx)
	}
	return nil, notFound(r.GetKeyId())
}

// waitForCaller blocks until the caller gives up.
func (s *fakeServer) waitForCaller(ctx context.Context) error {
	s.mu.Lock()
	if s.started != nil {
		close(s.started)
		s.started = nil
	}
	s.mu.Unlock()
	<-ctx.Done()
	return status.FromContextError(ctx.Err()).Err()
}

// DecryptWithLabel "decrypts" by reversing the ciphertext; a kem_output of
// one byte is refused as the daemon does, naming the field.
func (s *fakeServer) DecryptWithLabel(_ context.Context, r *mlskeyv1.DecryptWithLabelRequest) (*mlskeyv1.DecryptWithLabelResponse, error) {
	if r.GetKeyId() != "leaf-1" {
		return nil, notFound(r.GetKeyId())
	}
	if len(r.GetKemOutput()) == 1 {
		return nil, status.Error(codes.InvalidArgument, "kem_output: not a point of the suite's curve")
	}
	pt := slices.Clone(r.GetCiphertext())
	slices.Reverse(pt)
	return &mlskeyv1.DecryptWithLabelResponse{Plaintext: append(pt, r.GetContext()...)}, nil
}

func (s *fakeServer) AttestKey(_ context.Context, r *mlskeyv1.AttestKeyRequest) (*mlskeyv1.AttestKeyResponse, error) {
	s.mu.Lock()
	s.nonces = append(s.nonces, r.GetNonce())
	s.mu.Unlock()
	return nil, status.Error(codes.Unimplemented, "key_id: the device cannot attest keys")
}

func (s *fakeServer) CreateKeyPackages(ctx context.Context, r *mlskeyv1.CreateKeyPackagesRequest) (*mlskeyv1.CreateKeyPackagesResponse, error) {
	s.mu.Lock()
	s.lastKP = proto.Clone(r).(*mlskeyv1.CreateKeyPackagesRequest)
	refill := s.refill
	s.kpTimeLeft = 0
	if d, ok := ctx.Deadline(); ok {
		s.kpTimeLeft = time.Until(d)
	}
	s.mu.Unlock()
	if string(r.GetCredential().GetBasicIdentity()) == "slow" {
		return nil, s.waitForCaller(ctx)
	}
	resp := &mlskeyv1.CreateKeyPackagesResponse{SignatureKey: sigKey(r.GetCipherSuite())}
	if r.GetSignatureKeyId() == "" {
		resp.SignatureKey.Id = "sig-new"
	}
	n := r.GetCount()
	if r.GetEnsureTarget() > 0 {
		n = refill
	}
	for i := range n {
		resp.KeyPackages = append(resp.KeyPackages, &mlskeyv1.CreatedKeyPackage{
			KeyPackage:          []byte{0, 1, 0, 5, byte(i)},
			KeyPackageRef:       []byte{0xaa, byte(i)},
			InitKeyId:           fmt.Sprint("init-", i),
			LeafEncryptionKeyId: fmt.Sprint("leaf-", i),
		})
	}
	return resp, nil
}

func (s *fakeServer) lastKeyPackageRequest() *mlskeyv1.CreateKeyPackagesRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastKP
}

func (s *fakeServer) listRequests() []*mlskeyv1.ListKeysRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.lastList
	s.lastList = nil
	return r
}

// OpenWelcome accepts MLSMessages holding a Welcome. A Welcome whose last
// byte is 0x50 is "with PSKs": no GroupInfo, no path secret.
func (s *fakeServer) OpenWelcome(_ context.Context, r *mlskeyv1.OpenWelcomeRequest) (*mlskeyv1.OpenWelcomeResponse, error) {
	w := r.GetWelcome()
	if !bytes.HasPrefix(w, []byte{0, 1, 0, 3}) {
		return nil, status.Error(codes.InvalidArgument, "not a Welcome MLSMessage")
	}
	resp := &mlskeyv1.OpenWelcomeResponse{
		KeyPackageRef: []byte{0xaa, 0},
		InitKeyId:     "init-0",
		CipherSuite:   1,
		GroupSecrets: &mlskeyv1.GroupSecrets{
			JoinerSecret: []byte{1, 1},
			PathSecret:   []byte{2, 2},
		},
		GroupInfo: []byte{3, 3},
		GroupId:   []byte("group"),
		Epoch:     7,
	}
	if w[len(w)-1] == 0x50 {
		resp.GroupInfo, resp.GroupId, resp.Epoch = nil, nil, 0
		resp.GroupSecrets.PathSecret = nil
		resp.GroupSecrets.Psks = []*mlskeyv1.PreSharedKeyID{{PskType: 1, PskId: []byte{4}, PskNonce: []byte{5, 5}}}
	}
	return resp, nil
}

// startFake serves a fakeServer on a Unix socket and returns it with the
// socket path.
func startFake(t *testing.T) (*fakeServer, string) {
	t.Helper()
	// Unix socket paths are limited to ~108 bytes: t.TempDir() may be too
	// long.
	dir, err := os.MkdirTemp("", "mlskeyctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeServer{}
	srv := grpc.NewServer()
	mlskeyv1.RegisterKeyServiceServer(srv, fake)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return fake, sock
}

// Repair destroys the stray "st-1" and retires the missing "0190aa" when
// asked; without flags it only reports them.
func (s *fakeServer) Repair(_ context.Context, r *mlskeyv1.RepairRequest) (*mlskeyv1.RepairResponse, error) {
	resp := &mlskeyv1.RepairResponse{StrayKeyIds: []string{"st-1"}, MissingKeyIds: []string{"0190aa"}}
	if r.GetDestroyStrays() {
		resp.DestroyedStrays, resp.StrayKeyIds = resp.StrayKeyIds, nil
	}
	if r.GetRetireMissing() {
		resp.RetiredMissing, resp.MissingKeyIds = resp.MissingKeyIds, nil
	}
	return resp, nil
}
