package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// forceHMAC makes a SoftHSM Backend seal in the hmac-kdf mode, as it does
// behind p11-kit, so that the mode is tested without a forwarding server.
func forceHMAC(b *Backend) {
	b.sealMu.Lock()
	b.sealMode, b.sealErr = sealModeHMAC, nil
	b.sealMu.Unlock()
}

// TestHMACSealInEpochs: in the hmac-kdf mode blobs are version 3 and name
// their epoch, the epoch key is a private generic secret found by its
// epoch id, tampering and a wrong aad fail, and a destroyed epoch makes
// its blobs useless while other epochs still open.
func TestHMACSealInEpochs(t *testing.T) {
	cfg := newToken(t)
	b := openBackend(t, cfg)
	forceHMAC(b)
	ctx := context.Background()
	for _, e := range []string{"epoch-a", "epoch-b"} {
		if err := b.NewEpoch(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.NewEpoch(ctx, "epoch-a"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second epoch-a: %v", err)
	}
	aad := []byte("catalog-id-42")
	ba, err := b.SealIn(ctx, "epoch-a", []byte("a"), aad)
	if err != nil {
		t.Fatal(err)
	}
	hdr := 2 + len("epoch-a")
	if ba[0] != sealV3 || string(ba[2:hdr]) != "epoch-a" || len(ba) != hdr+sealHMACSalt+1+gcmTagLen {
		t.Fatalf("blob %x", ba)
	}
	if pt, err := b.Unseal(ctx, ba, aad); err != nil || string(pt) != "a" {
		t.Fatalf("unseal: %q %v", pt, err)
	}
	if _, err := b.Unseal(ctx, ba, []byte("other")); !errors.Is(err, ErrSealedBlob) {
		t.Fatalf("wrong aad: %v", err)
	}
	for _, i := range []int{0, 1, hdr - 1, hdr, len(ba) - 1} {
		bad := bytes.Clone(ba)
		bad[i] ^= 0x80
		if _, err := b.Unseal(ctx, bad, aad); !errors.Is(err, ErrSealedBlob) && !errors.Is(err, keystore.ErrEpochDestroyed) {
			t.Fatalf("tampered byte %d: %v", i, err)
		}
	}
	// Epoch b's key under epoch a's header: the header is authenticated
	// and names the key, so a blob cannot be moved between epochs.
	bb, err := b.SealIn(ctx, "epoch-b", []byte("b"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DestroyEpoch(ctx, "epoch-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, ba, aad); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("blob of a destroyed epoch: %v", err)
	}
	if _, err := b.SealIn(ctx, "epoch-a", []byte("a"), nil); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("seal in a destroyed epoch: %v", err)
	}
	if pt, err := b.Unseal(ctx, bb, aad); err != nil || string(pt) != "b" {
		t.Fatalf("other epoch: %q %v", pt, err)
	}
	// A restart (which probes GCM on SoftHSM) still lists the HMAC epoch
	// and opens its blobs.
	b2 := openBackend(t, cfg)
	ids, err := b2.Epochs(ctx)
	if err != nil || len(ids) != 1 || ids[0] != "epoch-b" {
		t.Fatalf("Epochs: %v %v", ids, err)
	}
	if pt, err := b2.Unseal(ctx, bb, aad); err != nil || string(pt) != "b" {
		t.Fatalf("after restart: %q %v", pt, err)
	}
}

// TestHMACPlantedAndImportedKeysRefused: a public generic secret planted
// without the PIN under the HMAC epoch label is never found, and an HMAC
// epoch key that was not generated in the token stops Epochs (so start-up).
func TestHMACPlantedAndImportedKeysRefused(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	plant(t, cfg, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, false),
		p11.NewAttribute(p11.CKA_SIGN, true),
		p11.NewAttribute(p11.CKA_VALUE, bytes.Repeat([]byte{0x42}, 32)),
		p11.NewAttribute(p11.CKA_ID, []byte("0")),
		p11.NewAttribute(p11.CKA_LABEL, sealHMACEpochLabel),
	})
	b := openBackend(t, cfg)
	forceHMAC(b)
	if ids, err := b.Epochs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("Epochs lists %v (%v); the planted key must not count", ids, err)
	}
	if _, err := b.SealIn(ctx, "0", []byte("secret"), nil); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("sealing under the planted key's id: %v", err)
	}
	err := b.withSession(ctx, "test", func(s p11.SessionHandle) error {
		_, err := b.mod.ctx.CreateObject(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_VALUE, bytes.Repeat([]byte{7}, 32)),
			p11.NewAttribute(p11.CKA_ID, []byte("imported")),
			p11.NewAttribute(p11.CKA_LABEL, sealHMACEpochLabel),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Epochs(ctx); !errors.Is(err, ErrNotProtected) {
		t.Fatalf("Epochs with an imported HMAC key: %v", err)
	}
}

// TestHMACRetiredSealedKeyGoneFromOldCatalog is
// TestRetiredSealedKeyGoneFromOldCatalog in the hmac-kdf mode: the epoch
// guarantee holds for keys sealed on a forwarded token too.
func TestHMACRetiredSealedKeyGoneFromOldCatalog(t *testing.T) {
	retiredSealedKeyGone(t, true)
}

// plant creates a token object in a session that never logged in.
func plant(t *testing.T, cfg Config, attrs []*p11.Attribute) {
	t.Helper()
	mod, err := acquireModule(cfg.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.release()
	slot, _, err := findToken(mod.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := mod.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.ctx.CloseSession(s)
	if _, err := mod.ctx.CreateObject(s, attrs); err != nil {
		t.Fatalf("planting without login: %v", err)
	}
}

// TestEpochOfOtherMechanismReplaced: a catalog whose current epoch was made
// on the token directly (an AES key) and that is then used through a
// forwarder (hmac-kdf) gets a new epoch at start-up instead of failing
// every seal, and the old, empty epoch is destroyed.
func TestEpochOfOtherMechanismReplaced(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "catalog.db")
	direct := sealOnly{openBackend(t, cfg)}
	st, err := keystore.Open(ctx, path, direct, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first := st.Epoch()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := direct.CanSealIn(ctx, first); !ok || err != nil {
		t.Fatalf("CanSealIn on the token that made it: %v %v", ok, err)
	}
	forwarded := sealOnly{openBackend(t, cfg)}
	forceHMAC(forwarded.Backend)
	if ok, err := forwarded.CanSealIn(ctx, first); ok || err != nil {
		t.Fatalf("CanSealIn of an AES epoch in hmac-kdf mode: %v %v", ok, err)
	}
	st, err = keystore.Open(ctx, path, forwarded, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Epoch() == first {
		t.Fatalf("epoch %q kept", first)
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sealed[0] != sealV3 || r.Epoch != st.Epoch() {
		t.Fatalf("blob version %d in epoch %q", r.Sealed[0], r.Epoch)
	}
	ids, err := forwarded.Epochs(ctx)
	if err != nil || len(ids) != 1 || ids[0] != st.Epoch() {
		t.Fatalf("epochs on the token: %v %v (the empty AES epoch must be gone)", ids, err)
	}
}
