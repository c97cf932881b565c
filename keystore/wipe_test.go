package keystore

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"
)

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// What Go lets the daemon reach of a software signing key is zeroed.
func TestWipeKey(t *testing.T) {
	_, e1, _ := ed25519.GenerateKey(rand.Reader)
	_, e4, _ := ed448.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wipeKey(e1)
	wipeKey(e4)
	wipeKey(ec)
	if !allZero(e1) || !allZero(e4) || !allZeroWords(ec.D.Bits()) {
		t.Fatal("key material left")
	}
}

func allZeroWords[W ~uint | ~uint64 | ~uint32](ws []W) bool {
	for _, w := range ws {
		if w != 0 {
			return false
		}
	}
	return true
}

// A sealed key is unsealed into a buffer that is zeroed after the
// operation, whatever the operation.
func TestSealedKeyWipedAfterUse(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(X25519), Options{}) // nothing signs: signing keys are sealed
	r, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	if err != nil || r.Protection != ProtectionSealed {
		t.Fatalf("%v %v", r, err)
	}
	var seen []byte
	if err := s.withPrivate(ctx, r, "sign", nil, func(priv []byte) error { seen = priv; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != ed25519.SeedSize || !allZero(seen) {
		t.Fatalf("unsealed key left in memory: %d bytes", len(seen))
	}
}
