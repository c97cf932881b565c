package server

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The fuzz targets drive the request validation paths of the service with
// a real SoftHSM token behind it: whatever the input, the answer is one of
// the documented codes, never a panic, and a failed request changes no key.

type fuzzEnv struct {
	svc   *Service
	store *keystore.Store
	ctx   context.Context
	kp    *pb.CreatedKeyPackage
	sig   string
	suit  *mls.Suite
	dir   string // the token's and catalog's
}

var (
	fuzzOnce sync.Once
	fuzzE    *fuzzEnv
	fuzzErr  error
)

// env opens one token per process: SoftHSM reads its configuration once,
// and fuzz workers run the target many times.
func env(tb testing.TB) *fuzzEnv {
	tb.Helper()
	if pkcs11.FindSoftHSM() == "" {
		if os.Getenv("MLSKEYD_REQUIRE_SOFTHSM") == "1" {
			tb.Fatal("SoftHSM is required but not installed")
		}
		tb.Skip("SoftHSM not installed")
	}
	fuzzOnce.Do(func() { fuzzE, fuzzErr = newFuzzEnv() })
	if fuzzErr != nil {
		tb.Fatal(fuzzErr)
	}
	return fuzzE
}

func newFuzzEnv() (*fuzzEnv, error) {
	dir, err := os.MkdirTemp("", "mlskeyd-fuzz")
	if err != nil {
		return nil, err
	}
	h, err := pkcs11.InitSoftHSM(dir, "fuzz")
	if err != nil {
		return nil, err
	}
	pin := pkcs11.RandomPIN()
	if err := h.InitToken(pkcs11.RandomPIN(), pin); err != nil {
		return nil, err
	}
	be, err := pkcs11.Open(context.Background(), h.Config(pin))
	if err != nil {
		return nil, err
	}
	st, err := keystore.Open(context.Background(), filepath.Join(dir, "catalog.db"), be, keystore.Options{})
	if err != nil {
		return nil, err
	}
	svc := NewService(st, Options{})
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerInfo{UID: 0, PID: int32(os.Getpid())}})
	resp, err := svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{
		CipherSuite: 1, Count: 1, LastResort: true,
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("fuzz")}},
	})
	if err != nil {
		return nil, err
	}
	su, _ := mls.LookupSuite(1)
	return &fuzzEnv{svc: svc, store: st, ctx: ctx, kp: resp.KeyPackages[0], sig: resp.SignatureKey.Id, suit: su, dir: dir}, nil
}

// welcomeFor builds a Welcome for the env's (last-resort, so reusable)
// KeyPackage the way a group member would, as a seed that reaches the
// device and the decryption paths.
func (e *fuzzEnv) welcomeFor(tb testing.TB) []byte {
	tb.Helper()
	su := e.suit
	init, err := e.svc.GetKey(e.ctx, &pb.GetKeyRequest{Id: e.kp.InitKeyId})
	if err != nil {
		tb.Fatal(err)
	}
	joiner := make([]byte, su.HashSize())
	rand.Read(joiner)
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{Version: 1, CipherSuite: su.ID, GroupID: []byte("fuzz group"), Epoch: 3,
			TreeHash: make([]byte, su.HashSize()), ConfirmedTranscriptHash: make([]byte, su.HashSize())},
		ConfirmationTag: make([]byte, su.HashSize()), Signature: make([]byte, 64),
	}
	member, _ := su.Extract(joiner, make([]byte, su.HashSize()))
	ws, _ := su.DeriveSecret(member, "welcome")
	key, _ := su.ExpandWithLabel(ws, "key", nil, su.AEADKeySize())
	nonce, _ := su.ExpandWithLabel(ws, "nonce", nil, su.AEADNonceSize())
	aead, _ := su.NewAEAD(key)
	w := &mls.Welcome{CipherSuite: su.ID, EncryptedGroupInfo: aead.Seal(nil, nonce, gi.Marshal(), nil)}
	kem, ct, err := su.EncryptWithLabel(init.PublicKey, mls.LabelWelcome, w.EncryptedGroupInfo, (&mls.GroupSecrets{JoinerSecret: joiner}).Marshal())
	if err != nil {
		tb.Fatal(err)
	}
	w.Secrets = []mls.EncryptedGroupSecrets{{NewMember: e.kp.KeyPackageRef, KEMOutput: kem, Ciphertext: ct}}
	return mls.WelcomeMessage(w)
}

func wantDocumented(t *testing.T, what string, err error) {
	switch status.Code(err) {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied:
	default:
		t.Fatalf("%s: %v", what, err)
	}
}

func (e *fuzzEnv) keysIntact(t *testing.T) {
	for _, id := range []string{e.kp.InitKeyId, e.kp.LeafEncryptionKeyId, e.sig} {
		k, err := e.svc.GetKey(e.ctx, &pb.GetKeyRequest{Id: id})
		if err != nil || k.State != pb.KeyState_KEY_STATE_ACTIVE {
			t.Fatalf("key %s after a fuzzed request: %v %v", id, k, err)
		}
	}
}

func FuzzOpenWelcome(f *testing.F) {
	e := env(f)
	w := e.welcomeFor(f)
	if _, err := e.svc.OpenWelcome(e.ctx, &pb.OpenWelcomeRequest{Welcome: w}); err != nil {
		f.Fatalf("seed Welcome does not open: %v", err)
	}
	f.Add(w)
	f.Add(w[:len(w)/2])
	f.Add([]byte{0, 1, 0, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := e.svc.OpenWelcome(e.ctx, &pb.OpenWelcomeRequest{Welcome: b})
		wantDocumented(t, "OpenWelcome", err)
		e.keysIntact(t)
	})
}

func FuzzDecryptWithLabel(f *testing.F) {
	e := env(f)
	leaf, err := e.svc.GetKey(e.ctx, &pb.GetKeyRequest{Id: e.kp.LeafEncryptionKeyId})
	if err != nil {
		f.Fatal(err)
	}
	kem, ct, err := e.suit.EncryptWithLabel(leaf.PublicKey, mls.LabelUpdatePathNode, []byte("context"), []byte("secret"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kem, ct, []byte("context"))
	f.Add(make([]byte, 32), ct, []byte{})
	f.Add(kem[:31], ct[:3], []byte("x"))
	f.Fuzz(func(t *testing.T, kem, ct, context []byte) {
		_, err := e.svc.DecryptWithLabel(e.ctx, &pb.DecryptWithLabelRequest{
			KeyId: e.kp.LeafEncryptionKeyId, Label: mls.LabelUpdatePathNode, Context: context, KemOutput: kem, Ciphertext: ct})
		wantDocumented(t, "DecryptWithLabel", err)
		e.keysIntact(t)
	})
}

func FuzzSignWithLabel(f *testing.F) {
	e := env(f)
	for _, l := range mls.SignatureLabels {
		f.Add(l, []byte("content"))
	}
	f.Add("Welcome", []byte{})
	f.Fuzz(func(t *testing.T, label string, content []byte) {
		_, err := e.svc.SignWithLabel(e.ctx, &pb.SignWithLabelRequest{KeyId: e.sig, Label: label, Content: content})
		wantDocumented(t, "SignWithLabel", err)
		e.keysIntact(t)
	})
}
