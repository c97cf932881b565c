package tpm

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestCatalogBoundToTPM: a catalog whose keys were made on one TPM refuses
// to start on another, and changes nothing there or in itself.
func TestCatalogBoundToTPM(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		path := filepath.Join(t.TempDir(), "catalog.db")
		b := env.open(t)
		id1, err := b.Identity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s, err := keystore.Open(ctx, path, b, keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		k, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Algorithm: keystore.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		b.Close()

		other := openCfg(t, env.foreign(t))
		id2, err := other.Identity(ctx)
		if err != nil || id2 == id1 {
			t.Fatalf("foreign TPM identity %q (own %q): %v", id2, id1, err)
		}
		_, err = keystore.Open(ctx, path, other, keystore.Options{})
		var be *keystore.BindingError
		if !errors.As(err, &be) || be.DeviceID != id2 || !be.Identity {
			t.Fatalf("catalog on another TPM: %v", err)
		}
		t.Log(err)
		other.Close()

		env.restart(t)
		b = env.open(t)
		s, err = keystore.Open(ctx, path, b, keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sg, err := s.Signer(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		d := digestFor(keystore.ECDSAP256, "m")
		if _, err := sg.Sign(nil, d, crypto.SHA256); err != nil {
			t.Fatalf("key after the refused start: %v", err)
		}
	})
}

// TestAdoptedTPMThenTheRightOne: adopting another TPM by mistake marks the
// hardware keys missing, destroying nothing; adopting the right TPM again
// makes them usable.
func TestAdoptedTPMThenTheRightOne(t *testing.T) {
	env := simEnv(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "catalog.db")
	b := env.open(t)
	s, err := keystore.Open(ctx, path, b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Algorithm: keystore.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	b.Close()

	other := openCfg(t, env.foreign(t))
	s, err = keystore.Open(ctx, path, other, keystore.Options{AdoptDevice: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Get(k.ID); r.State != keystore.StateMissing || len(r.DeviceRef) == 0 {
		t.Fatalf("key after adopting another TPM: %s", r.State)
	}
	s.Close()
	other.Close()

	b = env.open(t)
	s, err = keystore.Open(ctx, path, b, keystore.Options{AdoptDevice: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sg, err := s.Signer(ctx, k.ID)
	if err != nil {
		t.Fatalf("key back on its TPM: %v", err)
	}
	if _, err := sg.Sign(nil, digestFor(keystore.ECDSAP256, "m"), crypto.SHA256); err != nil {
		t.Fatal(err)
	}
}
