package pkcs11

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/circl/dh/x448"
	"github.com/cloudflare/circl/sign/ed448"
	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// rsToDER converts a raw r||s signature to ASN.1 DER.
func rsToDER(t testing.TB, sig []byte) []byte {
	t.Helper()
	half := len(sig) / 2
	der, err := asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig[:half]), new(big.Int).SetBytes(sig[half:]),
	})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

var ecdsaParams = map[keystore.Algorithm]struct {
	curve elliptic.Curve
	hash  crypto.Hash
}{
	keystore.ECDSAP256: {elliptic.P256(), crypto.SHA256},
	keystore.ECDSAP384: {elliptic.P384(), crypto.SHA384},
	keystore.ECDSAP521: {elliptic.P521(), crypto.SHA512},
}

var ecdhCurves = map[keystore.Algorithm]ecdh.Curve{
	keystore.X25519:   ecdh.X25519(),
	keystore.ECDHP256: ecdh.P256(),
	keystore.ECDHP384: ecdh.P384(),
	keystore.ECDHP521: ecdh.P521(),
}

// verifySign signs msg with the device and verifies with Go (or circl).
func verifySign(t testing.TB, b *Backend, ref []byte, alg keystore.Algorithm, pub []byte) {
	t.Helper()
	ctx := context.Background()
	msg := []byte("the quick brown fox " + string(alg))
	switch alg {
	case keystore.Ed25519:
		sig, err := b.Sign(ctx, ref, alg, msg)
		if err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatal("Ed25519 signature does not verify")
		}
	case keystore.Ed448:
		sig, err := b.Sign(ctx, ref, alg, msg)
		if err != nil {
			t.Fatal(err)
		}
		if !ed448.Verify(ed448.PublicKey(pub), msg, sig, "") {
			t.Fatal("Ed448 signature does not verify")
		}
	default:
		p := ecdsaParams[alg]
		h := p.hash.New()
		h.Write(msg)
		digest := h.Sum(nil)
		sig, err := b.Sign(ctx, ref, alg, digest)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(p.curve, pub)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(k, digest, rsToDER(t, sig)) {
			t.Fatal("ECDSA signature does not verify")
		}
	}
}

// verifyECDH derives with the device and compares with Go (or circl).
func verifyECDH(t testing.TB, b *Backend, ref []byte, alg keystore.Algorithm, pub []byte) {
	t.Helper()
	ctx := context.Background()
	if alg == keystore.X448 {
		var peerPub, peerPriv, want, devPub x448.Key
		if _, err := rand.Read(peerPriv[:]); err != nil {
			t.Fatal(err)
		}
		x448.KeyGen(&peerPub, &peerPriv)
		copy(devPub[:], pub)
		if !x448.Shared(&want, &peerPriv, &devPub) {
			t.Fatal("circl x448.Shared failed")
		}
		z, err := b.ECDH(ctx, ref, alg, peerPub[:])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(z, want[:]) {
			t.Fatal("X448 shared secret differs from circl")
		}
		return
	}
	curve := ecdhCurves[alg]
	peer, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	devPub, err := curve.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	want, err := peer.ECDH(devPub)
	if err != nil {
		t.Fatal(err)
	}
	z, err := b.ECDH(ctx, ref, alg, peer.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(z, want) {
		t.Fatalf("%s shared secret differs from crypto/ecdh", alg)
	}
}

func listIDs(t testing.TB, b *Backend) map[string][]byte {
	t.Helper()
	keys, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, k := range keys {
		m[k.ID] = k.Ref
	}
	return m
}

var wantPubLen = map[keystore.Algorithm]int{
	keystore.Ed25519: 32, keystore.Ed448: 57, keystore.X25519: 32, keystore.X448: 56,
	keystore.ECDSAP256: 65, keystore.ECDSAP384: 97, keystore.ECDSAP521: 133,
	keystore.ECDHP256: 65, keystore.ECDHP384: 97, keystore.ECDHP521: 133,
}

func TestAllAlgorithms(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	if got := b.Algorithms(); len(got) != len(keystore.Algorithms) {
		t.Fatalf("Algorithms() = %v, want all of %v (notes %v)", got, keystore.Algorithms, b.ProbeNotes())
	}
	t.Logf("device: %s", b.Info().Device)
	for _, alg := range keystore.Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			id := "key-" + string(alg)
			ref, pub, err := b.Generate(ctx, id, alg)
			if err != nil {
				t.Fatal(err)
			}
			if len(pub) != wantPubLen[alg] {
				t.Fatalf("public key is %d bytes, want %d", len(pub), wantPubLen[alg])
			}
			if alg.IsSigning() {
				verifySign(t, b, ref, alg, pub)
				if _, err := b.ECDH(ctx, ref, alg, pub); !errors.Is(err, keystore.ErrWrongRole) {
					t.Fatalf("ECDH with a signing algorithm: %v", err)
				}
			} else {
				verifyECDH(t, b, ref, alg, pub)
				verifyECDH(t, b, ref, alg, pub) // cached handle
				if _, err := b.Sign(ctx, ref, alg, []byte("x")); !errors.Is(err, keystore.ErrWrongRole) {
					t.Fatalf("Sign with a key-agreement algorithm: %v", err)
				}
			}

			// The private value never leaves the token.
			err = b.withKey(ctx, objKey{p11.CKO_PRIVATE_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
				_, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
				return err
			})
			if !isCode(err, p11.CKR_ATTRIBUTE_SENSITIVE) {
				t.Fatalf("reading CKA_VALUE: got %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}

			if err := b.Check(ctx, ref, alg); err != nil {
				t.Fatalf("Check: %v", err)
			}
			other := keystore.Ed25519
			if alg == keystore.Ed25519 {
				other = keystore.ECDSAP256
			}
			if err := b.Check(ctx, ref, other); !errors.Is(err, keystore.ErrWrongRole) {
				t.Fatalf("Check with the wrong algorithm: %v", err)
			}
			if r, ok := listIDs(t, b)[id]; !ok || !bytes.Equal(r, ref) {
				t.Fatalf("List does not report %q with ref %x", id, ref)
			}

			if err := b.Destroy(ctx, ref); err != nil {
				t.Fatal(err)
			}
			if err := b.Destroy(ctx, ref); err != nil {
				t.Fatalf("second Destroy: %v", err)
			}
			if _, ok := listIDs(t, b)[id]; ok {
				t.Fatalf("List still reports %q after Destroy", id)
			}
			if alg.IsSigning() {
				_, err = b.Sign(ctx, ref, alg, make([]byte, 32))
			} else {
				_, err = b.ECDH(ctx, ref, alg, pub)
			}
			if !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
				t.Fatalf("use after Destroy: %v, want ErrDeviceKeyNotFound", err)
			}
			if err := b.Check(ctx, ref, alg); !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
				t.Fatalf("Check after Destroy: %v, want ErrDeviceKeyNotFound", err)
			}
		})
	}
}

func TestECDHInvalidPeer(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()

	refP, pubP, err := b.Generate(ctx, "p256", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	offCurve := bytes.Clone(pubP)
	offCurve[64] ^= 1 // change y: no longer on the curve
	_, err = b.ECDH(ctx, refP, keystore.ECDHP256, offCurve)
	if !errors.Is(err, keystore.ErrInvalidPeerKey) {
		t.Fatalf("off-curve P-256 peer: %v, want ErrInvalidPeerKey", err)
	}
	t.Logf("off-curve P-256: %v", err)
	if _, err := b.ECDH(ctx, refP, keystore.ECDHP256, pubP[:33]); !errors.Is(err, keystore.ErrInvalidPeerKey) {
		t.Fatalf("short P-256 peer: %v", err)
	}

	refX, pubX, err := b.Generate(ctx, "x25519", keystore.X25519)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.ECDH(ctx, refX, keystore.X25519, make([]byte, 32))
	if !errors.Is(err, keystore.ErrInvalidPeerKey) {
		t.Fatalf("all-zero X25519 peer: %v, want ErrInvalidPeerKey", err)
	}
	t.Logf("all-zero X25519: %v", err)

	// The backend still works afterwards.
	verifyECDH(t, b, refP, keystore.ECDHP256, pubP)
	verifyECDH(t, b, refX, keystore.X25519, pubX)
}

func TestConcurrentSign(t *testing.T) {
	cfg := newToken(t)
	cfg.MaxSessions = 4
	b := openBackend(t, cfg)
	if cap(b.sem) != 4 {
		t.Fatalf("pool size %d, want 4", cap(b.sem))
	}
	ctx := context.Background()
	refE, pubE, err := b.Generate(ctx, "ed", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	refP, pubP, err := b.Generate(ctx, "p256", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	kP, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pubP)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				msg := []byte(fmt.Sprintf("goroutine %d message %d", g, i))
				if g%2 == 0 {
					sig, err := b.Sign(ctx, refE, keystore.Ed25519, msg)
					if err != nil {
						errs <- err
						return
					}
					if !ed25519.Verify(pubE, msg, sig) {
						errs <- errors.New("Ed25519 signature does not verify")
						return
					}
				} else {
					d := crypto.SHA256.New()
					d.Write(msg)
					digest := d.Sum(nil)
					sig, err := b.Sign(ctx, refP, keystore.ECDSAP256, digest)
					if err != nil {
						errs <- err
						return
					}
					if !ecdsa.VerifyASN1(kP, digest, rsToDER(t, sig)) {
						errs <- errors.New("ECDSA signature does not verify")
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	b.poolMu.Lock()
	idle := len(b.idle)
	b.poolMu.Unlock()
	if idle > 4 {
		t.Fatalf("%d idle sessions, pool bound is 4", idle)
	}
}

func TestReopen(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	b1, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[keystore.Algorithm][]byte{}
	pubs := map[keystore.Algorithm][]byte{}
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.ECDSAP384, keystore.X25519} {
		refs[alg], pubs[alg], err = b1.Generate(ctx, "re-"+string(alg), alg)
		if err != nil {
			t.Fatal(err)
		}
	}
	blob, err := testSeal(ctx, b1, []byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := b1.Sign(ctx, refs[keystore.Ed25519], keystore.Ed25519, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: %v", err)
	}

	b2 := openBackend(t, cfg)
	verifySign(t, b2, refs[keystore.Ed25519], keystore.Ed25519, pubs[keystore.Ed25519])
	verifySign(t, b2, refs[keystore.ECDSAP384], keystore.ECDSAP384, pubs[keystore.ECDSAP384])
	verifyECDH(t, b2, refs[keystore.X25519], keystore.X25519, pubs[keystore.X25519])
	for alg, ref := range refs {
		if err := b2.Check(ctx, ref, alg); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(listIDs(t, b2)); n != 3 {
		t.Fatalf("List after reopen: %d keys, want 3", n)
	}
	pt, err := b2.Unseal(ctx, blob, []byte("aad"))
	if err != nil || string(pt) != "secret" {
		t.Fatalf("Unseal after reopen: %q, %v", pt, err)
	}
	if ids, err := b2.Epochs(ctx); err != nil || len(ids) != 1 {
		t.Fatalf("epochs after reopen: %v %v, want one", ids, err)
	}
}

func TestSessionRecovery(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	ref, pub, err := b.Generate(ctx, "rec", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	verifySign(t, b, ref, keystore.Ed25519, pub)

	// Someone logs the module out: handles die and private objects vanish.
	if err := b.withSession(ctx, func(s p11.SessionHandle) error { return b.mod.ctx.Logout(s) }); err != nil {
		t.Fatal(err)
	}
	verifySign(t, b, ref, keystore.Ed25519, pub)
	if n := b.relogins.Load(); n != 1 {
		t.Fatalf("%d re-logins, want 1", n)
	}
	if n := len(listIDs(t, b)); n != 1 {
		t.Fatalf("List after re-login: %d keys", n)
	}

	// A pooled session is closed behind the pool's back.
	b.poolMu.Lock()
	for _, s := range b.idle {
		if err := b.mod.ctx.CloseSession(s); err != nil {
			t.Fatal(err)
		}
	}
	b.poolMu.Unlock()
	verifySign(t, b, ref, keystore.Ed25519, pub)

	// Several idle sessions, then logged out and every session closed,
	// anchor included.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if _, err := b.Sign(ctx, ref, keystore.Ed25519, []byte("m")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := b.withSession(ctx, func(s p11.SessionHandle) error { return b.mod.ctx.Logout(s) }); err != nil {
		t.Fatal(err)
	}
	if err := b.mod.ctx.CloseAllSessions(b.slot); err != nil {
		t.Fatal(err)
	}
	verifySign(t, b, ref, keystore.Ed25519, pub)
	blob, err := testSeal(ctx, b, []byte("p"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
}

func TestWaitForSession(t *testing.T) {
	cfg := newToken(t)
	cfg.MaxSessions = 1
	b := openBackend(t, cfg)
	ref, _, err := b.Generate(context.Background(), "w", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	held := make(chan struct{})
	go func() {
		_ = b.withSession(context.Background(), func(p11.SessionHandle) error {
			close(held)
			<-hold
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.Sign(ctx, ref, keystore.Ed25519, []byte("m")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign with every session busy: %v, want DeadlineExceeded", err)
	}
	close(hold)
	if _, err := b.Sign(context.Background(), ref, keystore.Ed25519, []byte("m")); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()

	bad := cfg
	bad.TokenLabel = "no-such-token"
	_, err := Open(ctx, bad)
	if err == nil || !strings.Contains(err.Error(), testLabel) {
		t.Fatalf("unknown label: %v (want the available labels listed)", err)
	}
	t.Log(err)

	bad = cfg
	bad.PIN = "wrong-pin-1234"
	_, err = Open(ctx, bad)
	if !isCode(err, p11.CKR_PIN_INCORRECT) || strings.Contains(err.Error(), bad.PIN) {
		t.Fatalf("wrong PIN: %v", err)
	}
	t.Log(err)

	// By serial, and a second Backend on the same token in one process.
	b := openBackend(t, cfg)
	bySerial := Config{Module: cfg.Module, TokenSerial: b.token.SerialNumber, PIN: cfg.PIN}
	b2 := openBackend(t, bySerial)
	ref, pub, err := b.Generate(ctx, "shared", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	verifySign(t, b2, ref, keystore.Ed25519, pub)
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	verifySign(t, b, ref, keystore.Ed25519, pub) // b2's Close did not finalise the module
}

func TestCheckRejects(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	// A key made outside Generate, with SENSITIVE=false: Check must refuse it.
	spec := b.specs[keystore.Ed25519]
	err := b.withSession(ctx, func(s p11.SessionHandle) error {
		pt, kt := keyPairTemplates(spec, "weak", true)
		for _, a := range kt {
			switch a.Type {
			case p11.CKA_SENSITIVE:
				a.Value = []byte{0}
			case p11.CKA_EXTRACTABLE:
				a.Value = []byte{1}
			}
		}
		_, _, err := b.mod.ctx.GenerateKeyPair(s, []*p11.Mechanism{p11.NewMechanism(spec.genMech, nil)}, pt, kt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Check(ctx, EncodeRef("weak"), keystore.Ed25519)
	if !errors.Is(err, ErrNotProtected) || !strings.Contains(err.Error(), "CKA_") {
		t.Fatalf("Check on an extractable key: %v", err)
	}
	t.Log(err)
	if err := b.Check(ctx, EncodeRef("missing"), keystore.Ed25519); !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		t.Fatalf("Check on a missing key: %v", err)
	}
	if _, err := b.Sign(ctx, []byte("garbage"), keystore.Ed25519, nil); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("Sign with a malformed ref: %v", err)
	}
}

func TestListOrphanPublicKey(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "orphan", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	// Remove only the private half.
	err = b.withKey(ctx, objKey{p11.CKO_PRIVATE_KEY, "orphan"}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		return b.mod.ctx.DestroyObject(s, h)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := listIDs(t, b)["orphan"]; !ok {
		t.Fatal("List does not report a public key without its private half")
	}
	if err := b.Destroy(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if len(listIDs(t, b)) != 0 {
		t.Fatal("public half survived Destroy")
	}
}

func TestCloseUnblocksWaiters(t *testing.T) {
	cfg := newToken(t)
	cfg.MaxSessions = 1
	b, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref, _, err := b.Generate(context.Background(), "c", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	hold, held := make(chan struct{}), make(chan struct{})
	go func() {
		_ = b.withSession(context.Background(), func(p11.SessionHandle) error {
			close(held)
			<-hold
			return nil
		})
	}()
	<-held
	waiter := make(chan error)
	go func() {
		_, err := b.Sign(context.Background(), ref, keystore.Ed25519, []byte("m"))
		waiter <- err
	}()
	time.Sleep(20 * time.Millisecond)
	closed := make(chan error)
	go func() { closed <- b.Close() }()
	if err := <-waiter; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting Sign during Close: %v, want ErrClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while an operation was still running")
	case <-time.After(20 * time.Millisecond):
	}
	close(hold)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

func TestReloginPINFailureIsSticky(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "k", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	b.pin = "not-the-pin" // as if the PIN changed under us
	if err := b.withSession(ctx, func(s p11.SessionHandle) error { return b.mod.ctx.Logout(s) }); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, err = b.Sign(ctx, ref, keystore.Ed25519, []byte("m"))
		if !isCode(err, p11.CKR_USER_NOT_LOGGED_IN) || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") {
			t.Fatalf("Sign after losing the login with a bad PIN: %v", err)
		}
	}
	t.Log(err)
	if b.relogins.Load() != 0 {
		t.Fatal("re-login succeeded with a wrong PIN")
	}
}
