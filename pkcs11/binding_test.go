package pkcs11

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

func TestInstallationMarker(t *testing.T) {
	ctx := context.Background()
	cfg := newToken(t)
	b := openBackend(t, cfg)
	if id, err := b.Binding(ctx); err != nil || id != "" {
		t.Fatalf("fresh token: %q %v", id, err)
	}
	if err := b.Bind(ctx, "aaaa"); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(ctx, "aaaa"); err != nil {
		t.Fatalf("binding again to the same id: %v", err)
	}
	if err := b.Bind(ctx, "bbbb"); err == nil {
		t.Fatal("token bound to a second installation")
	}
	// The marker is a token object: another process (a reopened module)
	// reads it, and List does not take it for a key.
	b2 := openBackend(t, cfg)
	if id, err := b2.Binding(ctx); err != nil || id != "aaaa" {
		t.Fatalf("after reopening: %q %v", id, err)
	}
	if keys, err := b2.List(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("List sees the marker: %v %v", keys, err)
	}
}

// TestOtherCatalogRefusedOnToken is the keystore's binding on a real token:
// a second catalog refuses to start and leaves the first one's keys alone.
func TestOtherCatalogRefusedOnToken(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	dir := t.TempDir()
	s, err := keystore.Open(ctx, filepath.Join(dir, "a.db"), b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Algorithm: keystore.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := keystore.Open(ctx, filepath.Join(dir, "b.db"), b, keystore.Options{}); err == nil {
		t.Fatal("a second catalog started on a bound token")
	}
	if err := b.Check(ctx, k.DeviceRef, k.Algorithm); err != nil {
		t.Fatalf("key after the refused start: %v", err)
	}
}
