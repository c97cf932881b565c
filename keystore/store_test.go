package keystore

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cloudflare/circl/dh/x448"
	"github.com/cloudflare/circl/sign/ed448"
)

func openStore(t testing.TB, be Backend, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(context.Background(), path, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestSignersVerify(t *testing.T) {
	ctx := context.Background()
	for _, prot := range []string{"hardware", "sealed"} {
		be := newFake()
		if prot == "sealed" {
			be = newFake(X25519) // nothing that signs: every signing key is sealed
		}
		s, _ := openStore(t, be, Options{})
		for _, alg := range []Algorithm{Ed25519, Ed448, ECDSAP256, ECDSAP384, ECDSAP521} {
			t.Run(prot+"/"+string(alg), func(t *testing.T) {
				r, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: alg})
				if err != nil {
					t.Fatal(err)
				}
				if string(r.Protection) != prot {
					t.Fatalf("protection %s, want %s", r.Protection, prot)
				}
				sg, err := s.Signer(ctx, r.ID)
				if err != nil {
					t.Fatal(err)
				}
				msg := []byte("SignContent bytes")
				switch pub := sg.Public().(type) {
				case ed25519.PublicKey:
					sig, err := sg.Sign(rand.Reader, msg, crypto.Hash(0))
					if err != nil || !ed25519.Verify(pub, msg, sig) {
						t.Fatalf("ed25519: %v", err)
					}
				case ed448.PublicKey:
					sig, err := sg.Sign(rand.Reader, msg, crypto.Hash(0))
					if err != nil || !ed448.Verify(pub, msg, sig, "") {
						t.Fatalf("ed448: %v", err)
					}
				case *ecdsa.PublicKey:
					h := crypto.SHA256
					switch pub.Curve.Params().BitSize {
					case 384:
						h = crypto.SHA384
					case 521:
						h = crypto.SHA512
					}
					d := h.New()
					d.Write(msg)
					digest := d.Sum(nil)
					for range 20 { // several, so leading-zero r or s show up on P-521
						sig, err := sg.Sign(rand.Reader, digest, h)
						if err != nil || !ecdsa.VerifyASN1(pub, digest, sig) {
							t.Fatalf("ecdsa: %v", err)
						}
					}
				default:
					t.Fatalf("Public() is %T", pub)
				}
			})
		}
	}
}

func TestDecryptionKeysMatchSoftware(t *testing.T) {
	ctx := context.Background()
	for _, be := range []*fakeBackend{newFake(), newFake(Ed25519)} {
		s, _ := openStore(t, be, Options{})
		for _, alg := range []Algorithm{X25519, ECDHP256, ECDHP384, ECDHP521} {
			r, err := s.Create(ctx, KeySpec{Role: RoleLeafEncryption, Algorithm: alg})
			if err != nil {
				t.Fatal(err)
			}
			k, err := s.DecryptionKey(ctx, r.ID)
			if err != nil {
				t.Fatal(err)
			}
			kx := k.(ecdh.KeyExchanger)
			peer, _ := kx.Curve().GenerateKey(rand.Reader)
			z, err := kx.ECDH(peer.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			want, _ := peer.ECDH(kx.PublicKey())
			if string(z) != string(want) {
				t.Fatalf("%s/%s: shared secrets differ", r.Protection, alg)
			}
		}
		r, err := s.Create(ctx, KeySpec{Role: RoleLeafEncryption, Algorithm: X448})
		if err != nil {
			t.Fatal(err)
		}
		k, _ := s.DecryptionKey(ctx, r.ID)
		kx := k.(interface {
			X448PublicKey() []byte
			X448([]byte) ([]byte, error)
		})
		var ps, pp, want, pub x448.Key
		rand.Read(ps[:])
		x448.KeyGen(&pp, &ps)
		copy(pub[:], kx.X448PublicKey())
		x448.Shared(&want, &ps, &pub)
		z, err := kx.X448(pp[:])
		if err != nil || string(z) != string(want[:]) {
			t.Fatalf("x448: %v", err)
		}
	}
}

func TestAllZeroSharedSecretRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	r, _ := s.Create(ctx, KeySpec{Role: RoleLeafEncryption, Algorithm: X25519})
	k, _ := s.DecryptionKey(ctx, r.ID)
	kx := k.(ecdh.KeyExchanger)
	zero, _ := ecdh.X25519().NewPublicKey(make([]byte, 32))
	if _, err := kx.ECDH(zero); !errors.Is(err, ErrInvalidPeerKey) {
		t.Fatalf("all-zero peer: %v", err)
	}
}

func TestPolicyRefusesSealed(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(ECDSAP256), Options{MinProtection: map[Role]Protection{RoleSignature: ProtectionHardware}})
	if _, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519}); !errors.Is(err, ErrPolicy) {
		t.Fatalf("sealed Ed25519 under a hardware policy: %v", err)
	}
	if _, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	// The policy is per role: init keys may still be sealed.
	if r, err := s.Create(ctx, KeySpec{Role: RoleInit, Algorithm: X25519}); err != nil || r.Protection != ProtectionSealed {
		t.Fatalf("sealed init key: %v", err)
	}
}

func TestBatchAbortLeavesNothing(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, _ := openStore(t, be, Options{})
	b := s.NewBatch()
	recs, err := b.Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}, {Role: RoleSignature, Algorithm: Ed25519}})
	if err != nil {
		t.Fatal(err)
	}
	b.Abort(ctx)
	for _, r := range recs {
		if be.has(r.ID) {
			t.Fatalf("device key %s survived Abort", r.ID)
		}
		if _, err := s.Get(r.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("catalog has %s after Abort: %v", r.ID, err)
		}
	}
	// A failing generation in the middle of a batch destroys what it made.
	be.failGen = errors.New("token full")
	if _, err := s.NewBatch().Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}}); err == nil {
		t.Fatal("generation error swallowed")
	}
	if n, _ := be.List(ctx); len(n) != 0 {
		t.Fatalf("%d device keys left", len(n))
	}
}

func TestUseInitKeyExactlyOnce(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, _ := openStore(t, be, Options{})
	r, _ := s.Create(ctx, KeySpec{Role: RoleInit, Algorithm: X25519})

	// A failing operation consumes nothing.
	if _, err := s.UseInitKey(ctx, r.ID, func(any) error { return errors.New("bad ciphertext") }); err == nil {
		t.Fatal("error swallowed")
	}
	if got, _ := s.Get(r.ID); got.State != StateActive || !be.has(r.ID) {
		t.Fatal("failed use consumed the key")
	}

	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			_, err := s.UseInitKey(ctx, r.ID, func(k any) error {
				peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
				_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
				return err
			})
			if err == nil {
				wins.Add(1)
			} else if !errors.Is(err, ErrNotActive) {
				t.Errorf("loser: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d calls succeeded, want 1", wins.Load())
	}
	got, _ := s.Get(r.ID)
	if got.State != StateConsumed || be.has(r.ID) {
		t.Fatalf("state %s, device has key: %v", got.State, be.has(r.ID))
	}
}

func TestLastResortIsNotConsumed(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	b := s.NewBatch()
	recs, _ := b.Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}})
	recs[0].LastResort = true
	recs[0].KeyPackageRef = []byte{1, 2, 3}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.UseInitKey(ctx, recs[0].ID, func(any) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ByKeyPackageRef([]byte{1, 2, 3})
	if err != nil || got.State != StateActive {
		t.Fatalf("last resort key: %v %v", got, err)
	}
}

func TestReconcileAfterCrash(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	lost, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	retired, _ := s.Create(ctx, KeySpec{Role: RoleInit, Algorithm: X25519})
	// Creation interrupted: device keys without a committed record.
	orphans, _ := s.NewBatch().Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}, {Role: RoleInit, Algorithm: X25519}})
	// Retirement interrupted: the catalog says consumed, the device still has it.
	s.cat.update(retired.ID, func(r *Record) error { s.retire(r, StateConsumed, "test"); return nil })
	// A key removed behind the daemon's back.
	be.Destroy(ctx, lost.DeviceRef)
	s.Close()

	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, r := range orphans {
		if be.has(r.ID) {
			t.Errorf("orphan %s not destroyed", r.ID)
		}
	}
	if be.has(retired.ID) {
		t.Error("consumed key still on the device")
	}
	if r, _ := s.Get(lost.ID); r.State != StateMissing {
		t.Errorf("lost key is %s, want missing", r.State)
	}
	if r, _ := s.Get(kept.ID); r.State != StateActive || !be.has(kept.ID) {
		t.Error("kept key damaged")
	}
}

func TestListPagesAndFilters(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	for i := range 25 {
		role := RoleSignature
		if i%5 == 0 {
			role = RoleInit
		}
		alg := Ed25519
		if role == RoleInit {
			alg = X25519
		}
		if _, err := s.Create(ctx, KeySpec{Role: role, Suite: 1, Algorithm: alg}); err != nil {
			t.Fatal(err)
		}
	}
	var all []*Record
	after := ""
	for {
		page, next, err := s.List(Filter{Role: RoleSignature}, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
	}
	if len(all) != 20 {
		t.Fatalf("listed %d signature keys, want 20", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].ID >= all[i].ID {
			t.Fatal("not in id order")
		}
	}
}

func TestDeleteKeepsTombstone(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, _ := openStore(t, be, Options{})
	r, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: ECDSAP256})
	if _, _, err := s.Delete(ctx, r.ID, false); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(r.ID)
	if got.State != StateDestroyed || be.has(r.ID) {
		t.Fatal("not destroyed")
	}
	if _, err := s.Signer(ctx, r.ID); !errors.Is(err, ErrNotActive) {
		t.Fatalf("signer of destroyed key: %v", err)
	}
	if _, _, err := s.Delete(ctx, r.ID, false); !errors.Is(err, ErrNotActive) {
		t.Fatalf("second delete: %v", err)
	}
}

// blobBackend hides the fake's List: a device whose references are the
// keys themselves, like a TPM's blobs.
type blobBackend struct{ *fakeBackend }

func (blobBackend) List() {} // shadows fakeBackend.List with another signature

func TestBackendWithoutListerErasesReferences(t *testing.T) {
	ctx := context.Background()
	be := blobBackend{newFake()}
	if _, ok := Backend(be).(Lister); ok {
		t.Fatal("blobBackend is a Lister")
	}
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := s.Create(ctx, KeySpec{Role: RoleInit, Algorithm: X25519})
	kept, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	if _, err := s.UseInitKey(ctx, r.ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(r.ID)
	if got.State != StateConsumed || got.DeviceRef != nil || be.has(r.ID) {
		t.Fatalf("consumed key keeps its reference: %+v", got)
	}
	s.Close()
	// Without a device listing, start-up leaves active keys alone.
	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Get(kept.ID); got.State != StateActive {
		t.Fatalf("active key after restart: %s", got.State)
	}
}

// TestKindErrorsSayItOnce: errors of a kind (not active, wrong role) still
// match their sentinel but do not append its text to a message that says
// it already.
func TestKindErrorsSayItOnce(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	r, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Delete(ctx, r.ID, false); err != nil {
		t.Fatal(err)
	}
	_, err = s.Signer(ctx, r.ID)
	if !errors.Is(err, ErrNotActive) || err.Error() != fmt.Sprintf("key %q is destroyed", r.ID) {
		t.Errorf("signer of a destroyed key: %v", err)
	}
	_, _, err = s.Delete(ctx, r.ID, false)
	if !errors.Is(err, ErrNotActive) || err.Error() != fmt.Sprintf("key %q is already destroyed", r.ID) {
		t.Errorf("second delete: %v", err)
	}
	r2, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UseInitKey(ctx, r2.ID, func(any) error { return nil })
	if !errors.Is(err, ErrWrongRole) || strings.Contains(err.Error(), ErrWrongRole.Error()) {
		t.Errorf("signature key used as an init key: %v", err)
	}
}
