package pkcs11

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

const testEpoch = "0123456789abcdef"

// testSeal seals in testEpoch, creating it on first use.
func testSeal(ctx context.Context, b *Backend, pt, aad []byte) ([]byte, error) {
	if err := b.NewEpoch(ctx, testEpoch); err != nil && !errors.Is(err, ErrKeyExists) {
		return nil, err
	}
	return b.SealIn(ctx, testEpoch, pt, aad)
}

func TestSeal(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	hdr := 2 + len(testEpoch)
	for _, pt := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("k"), 4000)} {
		aad := []byte("catalog-id-42")
		blob, err := testSeal(ctx, b, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(blob) != hdr+12+len(pt)+16 || string(blob[2:hdr]) != testEpoch {
			t.Fatalf("blob of %d bytes for %d, header %q", len(blob), len(pt), blob[:hdr])
		}
		got, err := b.Unseal(ctx, blob, aad)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatal("round trip changed the plaintext")
		}
		blob2, _ := testSeal(ctx, b, pt, aad)
		if bytes.Equal(blob[hdr:hdr+12], blob2[hdr:hdr+12]) {
			t.Fatal("IV reused")
		}
		if _, err := b.Unseal(ctx, blob, []byte("catalog-id-43")); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("wrong aad: %v", err)
		}
		if _, err := b.Unseal(ctx, blob, nil); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("missing aad: %v", err)
		}
		for _, i := range []int{0, 1, hdr, hdr + 1, hdr + 12, len(blob) - 1} {
			bad := bytes.Clone(blob)
			bad[i] ^= 0x80
			// A changed epoch id names a key that is not there.
			if _, err := b.Unseal(ctx, bad, aad); !errors.Is(err, ErrSealedBlob) && !(i == 1 && errors.Is(err, keystore.ErrEpochDestroyed)) {
				t.Fatalf("tampered byte %d: %v", i, err)
			}
		}
		if _, err := b.Unseal(ctx, blob[:len(blob)-1], aad); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("truncated: %v", err)
		}
	}
}

// TestEpochDestroyed: once an epoch's key is destroyed its blobs fail with
// keystore.ErrEpochDestroyed, and other epochs are untouched.
func TestEpochDestroyed(t *testing.T) {
	cfg := newToken(t)
	b := openBackend(t, cfg)
	ctx := context.Background()
	for _, e := range []string{"epoch-a", "epoch-b"} {
		if err := b.NewEpoch(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.NewEpoch(ctx, "epoch-a"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second epoch-a: %v", err)
	}
	ba, err := b.SealIn(ctx, "epoch-a", []byte("a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := b.SealIn(ctx, "epoch-b", []byte("b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DestroyEpoch(ctx, "epoch-a"); err != nil {
		t.Fatal(err)
	}
	if err := b.DestroyEpoch(ctx, "epoch-a"); err != nil {
		t.Fatalf("destroying twice: %v", err)
	}
	if _, err := b.Unseal(ctx, ba, nil); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("blob of a destroyed epoch: %v", err)
	}
	if _, err := b.SealIn(ctx, "epoch-a", []byte("a"), nil); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("seal in a destroyed epoch: %v", err)
	}
	if pt, err := b.Unseal(ctx, bb, nil); err != nil || string(pt) != "b" {
		t.Fatalf("other epoch: %q %v", pt, err)
	}
	// A new backend (a restart) sees only epoch-b.
	b2 := openBackend(t, cfg)
	ids, err := b2.Epochs(ctx)
	if err != nil || len(ids) != 1 || ids[0] != "epoch-b" {
		t.Fatalf("Epochs: %v %v", ids, err)
	}
}

// plantAES creates an AES token object with a value the attacker knows, in
// a session that never logged in (so it can only be public), labelled
// and identified like a sealing key.
func plantAES(t *testing.T, cfg Config, label, id string, value []byte) {
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
	if _, err := mod.ctx.CreateObject(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_VALUE, value),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}); err != nil {
		t.Fatalf("planting without login: %v", err)
	}
}

// TestPlantedSealKeyRefused: before the daemon starts, a session that never
// logged in plants AES keys labelled as sealing keys with ids that sort
// first. The daemon neither lists nor uses them, and what it seals does not
// open under the planted value.
func TestPlantedSealKeyRefused(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	known := bytes.Repeat([]byte{0x42}, 32)
	plantAES(t, cfg, sealEpochLabel, "0", known)
	plantAES(t, cfg, sealLegacyLabel, "0", known)

	be := openBackend(t, cfg)
	if ids, err := be.Epochs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("Epochs lists %v (%v); the planted key must not count", ids, err)
	}
	if _, err := be.SealIn(ctx, "0", []byte("secret"), nil); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("sealing under the planted key's id: %v", err)
	}
	st, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), sealOnly{be}, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Epoch() == "0" || st.Epoch() == "" {
		t.Fatalf("keystore epoch %q", st.Epoch())
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed448})
	if err != nil {
		t.Fatal(err)
	}
	if r.Protection != keystore.ProtectionSealed || r.Epoch != st.Epoch() {
		t.Fatalf("record: %s in epoch %q", r.Protection, r.Epoch)
	}
	n := 2 + int(r.Sealed[1])
	if string(r.Sealed[2:n]) != st.Epoch() {
		t.Fatalf("blob header names epoch %q, catalog %q", r.Sealed[2:n], st.Epoch())
	}
	blk, _ := aes.NewCipher(known)
	g, _ := cipher.NewGCM(blk)
	for _, aad := range [][]byte{nil, r.Sealed[:n]} {
		if _, err := g.Open(nil, r.Sealed[n:n+12], r.Sealed[n+12:], aad); err == nil {
			t.Fatal("the sealed key opens under the planted key")
		}
	}
}

// TestImportedSealKeyRefused: a sealing key that was not generated in the
// token (CKA_LOCAL false, here imported by someone with the PIN) stops the
// daemon from starting.
func TestImportedSealKeyRefused(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	be := openBackend(t, cfg)
	err := be.withSession(ctx, "test", func(s p11.SessionHandle) error {
		_, err := be.mod.ctx.CreateObject(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_DECRYPT, true),
			p11.NewAttribute(p11.CKA_VALUE, bytes.Repeat([]byte{7}, 32)),
			p11.NewAttribute(p11.CKA_ID, []byte("imported")),
			p11.NewAttribute(p11.CKA_LABEL, sealEpochLabel),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The next start: its first Epochs judges the secret keys that Open
	// found, the second searches the token again.
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	be = openBackend(t, cfg)
	if _, err := be.Epochs(ctx); !errors.Is(err, ErrNotProtected) {
		t.Fatalf("Epochs with an imported key: %v", err)
	}
	_, err = keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), be, keystore.Options{})
	if !errors.Is(err, ErrNotProtected) {
		t.Fatalf("keystore.Open with an imported sealing key: %v", err)
	}
	t.Logf("refused: %v", err)
}

// TestLegacySealedBlob: a blob sealed before epochs (version 1, under a
// seal-v1 key) still opens.
func TestLegacySealedBlob(t *testing.T) {
	cfg := newToken(t)
	ctx := context.Background()
	be := openBackend(t, cfg)
	iv := bytes.Repeat([]byte{1}, gcmIVLen)
	var blob []byte
	err := be.withSession(ctx, "test", func(s p11.SessionHandle) error {
		h, err := be.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, append(secretTemplate(sealLegacyLabel),
			p11.NewAttribute(p11.CKA_VALUE_LEN, 32), p11.NewAttribute(p11.CKA_SENSITIVE, true), p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_ENCRYPT, true), p11.NewAttribute(p11.CKA_DECRYPT, true), p11.NewAttribute(p11.CKA_ID, []byte("old"))))
		if err != nil {
			return err
		}
		params := p11.NewGCMParams(iv, []byte("aad"), 128)
		defer params.Free()
		if err := be.mod.ctx.EncryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		ct, err := be.mod.ctx.Encrypt(s, []byte("old secret"))
		blob = append(append([]byte{sealV1}, iv...), ct...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b2 := openBackend(t, cfg) // the start-up check accepts the legacy key
	if pt, err := b2.Unseal(ctx, blob, []byte("aad")); err != nil || string(pt) != "old secret" {
		t.Fatalf("legacy blob: %q %v", pt, err)
	}
}

// sealOnly hides the token's algorithms, so the keystore seals every key.
type sealOnly struct{ *Backend }

func (sealOnly) Algorithms() []keystore.Algorithm { return nil }

// TestRetiredSealedKeyGoneFromOldCatalog: on SoftHSM with every key sealed,
// copy the catalog, consume an init key (a new epoch starts and the old
// epoch key is destroyed in the token), put the copy back: the key does
// not open again.
func TestRetiredSealedKeyGoneFromOldCatalog(t *testing.T) {
	retiredSealedKeyGone(t, false)
}

func retiredSealedKeyGone(t *testing.T, hmac bool) {
	cfg := newToken(t)
	ctx := context.Background()
	be := sealOnly{openBackend(t, cfg)}
	if hmac {
		forceHMAC(be.Backend)
	}
	path := filepath.Join(t.TempDir(), "catalog.db")
	opts := keystore.Options{EpochPerRetirement: true}
	st, err := keystore.Open(ctx, path, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]byte{false: sealV2, true: sealV3}[hmac]; r.Sealed[0] != want || string(r.Sealed[2:2+int(r.Sealed[1])]) != r.Epoch {
		t.Fatalf("blob version %d naming epoch %q, record epoch %q", r.Sealed[0], r.Sealed[2:2+int(r.Sealed[1])], r.Epoch)
	}
	st.Close()
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	use := func(st *keystore.Store) error {
		_, err := st.UseInitKey(ctx, r.ID, func(k any) error {
			peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
			_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
			return err
		})
		return err
	}
	if st, err = keystore.Open(ctx, path, be, opts); err != nil {
		t.Fatal(err)
	}
	if err := use(st); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.WriteFile(path, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err = keystore.Open(ctx, path, be, opts); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := use(st); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("second open from the old catalog: %v", err)
	}
}
