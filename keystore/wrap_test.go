package keystore_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// p256KeyPackages commits a signature key and n KeyPackages' init and
// leaf keys of suite 2 (P-256).
func p256KeyPackages(t *testing.T, s *keystore.Store, n int) (inits, leaves []*keystore.Record) {
	t.Helper()
	specs := []keystore.KeySpec{{Role: keystore.RoleSignature, Suite: 2, Algorithm: keystore.ECDSAP256}}
	for range n {
		specs = append(specs,
			keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256},
			keystore.KeySpec{Role: keystore.RoleLeafEncryption, Suite: 2, Algorithm: keystore.ECDHP256})
	}
	b := s.NewBatch()
	recs, err := b.Generate(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ref := make([]byte, 32)
		rand.Read(ref)
		for _, r := range recs[1+2*i : 3+2*i] {
			r.KeyPackageRef, r.SignatureKeyID = ref, recs[0].ID
		}
		inits, leaves = append(inits, recs[1+2*i]), append(leaves, recs[2+2*i])
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	return inits, leaves
}

func useP256(ctx context.Context, s *keystore.Store, id string) error {
	_, err := s.UseInitKey(ctx, id, func(k any) error {
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
		return err
	})
	return err
}

// TestWrappedKeysDefault: on SoftHSM 2.6.1, P-256 HPKE keys are wrapped by
// default and survive a restart; X25519 ones stay hardware and the reason
// is given.
func TestWrappedKeysDefault(t *testing.T) {
	ctx := context.Background()
	e := newSoftHSMStore(t, keystore.Options{})
	inits, leaves := p256KeyPackages(t, e.store, 2)
	for _, r := range append(inits, leaves...) {
		if r.Protection != keystore.ProtectionWrapped || len(r.Sealed) == 0 || r.Epoch == "" {
			t.Fatalf("key %s: protection %s, %d blob bytes, epoch %q; want wrapped", r.ID, r.Protection, len(r.Sealed), r.Epoch)
		}
	}
	p, why := e.store.Availability(keystore.RoleInit, keystore.ECDHP256)
	if p != keystore.ProtectionWrapped || !strings.Contains(why, "wraps") {
		t.Errorf("ecdh-p256: %s %q", p, why)
	}
	p, why = e.store.Availability(keystore.RoleInit, keystore.X25519)
	t.Logf("x25519: %s: %s", p, why)
	if ok, _ := e.be.WrapSupport(keystore.X25519); !ok {
		if p != keystore.ProtectionHardware || !strings.Contains(why, "not wrapped") || !strings.Contains(why, "x25519") {
			t.Errorf("x25519: %s %q; want hardware and why not wrapped", p, why)
		}
	}
	// Restart: the blobs still serve.
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	e.open(t)
	k, err := e.store.DecryptionKey(ctx, leaves[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	z1, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ecdh.P256().NewPublicKey(leaves[0].PublicKey)
	z2, _ := peer.ECDH(pub)
	if string(z1) != string(z2) {
		t.Fatal("wrapped leaf key derives another secret than crypto/ecdh")
	}
	if err := useP256(ctx, e.store, inits[0].ID); err != nil {
		t.Fatal(err)
	}
	// A policy requiring hardware gets hardware, not a refusal.
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	e.opts.MinProtection = map[keystore.Role]keystore.Protection{keystore.RoleInit: keystore.ProtectionHardware}
	e.open(t)
	if p, err := e.store.ProtectionFor(keystore.RoleInit, keystore.ECDHP256); err != nil || p != keystore.ProtectionHardware {
		t.Errorf("init keys with min_protection hardware: %s, %v", p, err)
	}
}

// TestWrappedBlobMovedRefused: a blob copied into another record does not
// serve it, and changes nothing.
func TestWrappedBlobMovedRefused(t *testing.T) {
	ctx := context.Background()
	e := newSoftHSMStore(t, keystore.Options{})
	inits, _ := p256KeyPackages(t, e.store, 2)
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	blob := blobOf(t, e.catalog, inits[0].ID)
	editRecord(t, e.catalog, inits[1].ID, func(r *keystore.Record) { r.Sealed = blob })
	e.open(t)
	err := useP256(ctx, e.store, inits[1].ID)
	if !errors.Is(err, pkcs11.ErrWrappedBlob) {
		t.Fatalf("moved blob: %v, want ErrWrappedBlob", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error of more than one line: %q", err)
	}
	r, _ := e.store.Get(inits[1].ID)
	if r.State != keystore.StateActive {
		t.Errorf("failed use changed the key to %s", r.State)
	}
	if err := useP256(ctx, e.store, inits[0].ID); err != nil {
		t.Fatal(err)
	}
}

// TestWrappedKeyGoneWithEpoch: copy the catalog, consume an init key,
// rotate (the other keys move, the old epoch's wrapping key is
// destroyed), put the copy back: the consumed key does not unwrap again.
func TestWrappedKeyGoneWithEpoch(t *testing.T) {
	ctx := context.Background()
	e := newSoftHSMStore(t, keystore.Options{})
	inits, leaves := p256KeyPackages(t, e.store, 2)
	old := e.store.Epoch()
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	copyCatalog(t, e.catalog, e.catalog+".copy")
	e.open(t)
	if err := useP256(ctx, e.store, inits[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := e.store.RotateEpoch(ctx); err != nil {
		t.Fatal(err)
	}
	if e.store.Epoch() == old {
		t.Fatal("no new epoch")
	}
	// The live keys moved and still serve.
	if _, err := e.store.DecryptionKey(ctx, leaves[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := useP256(ctx, e.store, inits[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	copyCatalog(t, e.catalog+".copy", e.catalog)
	e.open(t)
	if err := useP256(ctx, e.store, inits[0].ID); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("consumed key from an old catalog: %v, want ErrEpochDestroyed", err)
	}
}

// TestWrappedRefusedWhereImpossible: the operator's wrapped for an
// algorithm the probe rejected stops the start with one line.
func TestWrappedRefusedWhereImpossible(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{})
	if ok, _ := e.be.WrapSupport(keystore.X25519); ok {
		t.Skip("this token wraps X25519 keys")
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	opts := keystore.Options{HPKEProtection: map[keystore.Algorithm]keystore.Protection{keystore.X25519: keystore.ProtectionWrapped}}
	_, err := keystore.Open(context.Background(), e.catalog, e.be, opts)
	if err == nil || !strings.Contains(err.Error(), "x25519") || !strings.Contains(err.Error(), "hardware or sealed") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("wrapped x25519: %v; want one line naming the algorithm and the alternatives", err)
	}
	t.Log(err)
	// sealed for X25519 is allowed and used.
	e.opts = keystore.Options{HPKEProtection: map[keystore.Algorithm]keystore.Protection{keystore.X25519: keystore.ProtectionSealed}}
	e.open(t)
	r, err := e.store.Create(context.Background(), keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519})
	if err != nil || r.Protection != keystore.ProtectionSealed {
		t.Fatalf("x25519 with protection sealed: %v %v", r, err)
	}
}

func copyCatalog(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func blobOf(t *testing.T, path, id string) []byte {
	var v []byte
	editRecord(t, path, id, func(r *keystore.Record) { v = r.Sealed })
	return v
}

// editRecord changes a record in a closed catalog, as someone with write
// access to the file could.
func editRecord(t *testing.T, path, id string, fn func(*keystore.Record)) {
	t.Helper()
	db, err := bolt.Open(filepath.Clean(path), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("keys"))
		r, err := keystore.DecodeStoredRecord([]byte(id), b.Get([]byte(id)))
		if err != nil {
			return err
		}
		fn(r)
		return b.Put([]byte(id), keystore.EncodeStoredRecord(r))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAdoptionQuarantinesWrappedKeys: a catalog adopted onto another token
// (whose wrapping keys are not the ones the blobs were made under) has its
// wrapped keys marked missing at start-up, as sealed ones, instead of
// failing at their first use; a normal start afterwards keeps them so.
func TestAdoptionQuarantinesWrappedKeys(t *testing.T) {
	ctx := context.Background()
	a := newSoftHSMStore(t, keystore.Options{})
	inits, leaves := p256KeyPackages(t, a.store, 1)
	if inits[0].Protection != keystore.ProtectionWrapped {
		t.Skipf("init key is %s on this token", inits[0].Protection)
	}
	if err := a.store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.be.Close(); err != nil { // one SoftHSM configuration per process
		t.Fatal(err)
	}
	be := newSoftHSMToken(t, t.TempDir(), "keystore-test-b")
	b := &softhsmEnv{be: &hookedBackend{Backend: be}, catalog: a.catalog, opts: keystore.Options{AdoptDevice: true}}
	b.open(t)
	for _, id := range []string{inits[0].ID, leaves[0].ID} {
		if r, _ := b.store.Get(id); r.State != keystore.StateMissing {
			t.Errorf("wrapped key %s after adopting another token: %s, want missing", id, r.State)
		}
	}
	b.store.Close()
	b.opts = keystore.Options{}
	b.open(t)
	if m, _ := b.store.Missing(); !slices.Contains(m, inits[0].ID) || !slices.Contains(m, leaves[0].ID) {
		t.Errorf("missing after a normal start on the adopted token: %v", m)
	}
	if err := useP256(ctx, b.store, inits[0].ID); err == nil {
		t.Error("a wrapped key of another token was used")
	}
}
