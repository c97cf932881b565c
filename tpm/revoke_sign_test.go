package tpm

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
)

// trySign signs a digest with the key and, when the TPM signs, checks the
// signature against the key's public key.
func trySign(ctx context.Context, t *testing.T, b *Backend, ref, pub []byte, alg keystore.Algorithm) error {
	t.Helper()
	d := digestFor(alg, "revocable")
	sig, err := b.Sign(ctx, ref, alg, d)
	if err != nil {
		return err
	}
	verify(t, alg, pub, d, sig)
	return nil
}

// TestRevokedSignatureKeyNotRevivedTPM: with signature keys bound to a
// bit, a deleted signature key whose epoch is pinned by another active
// signature key cannot sign from an old copy of the catalog. The daemon
// starts with the old copy, retires the key in it, and the blob itself is
// dead on the TPM; the other key of the epoch still signs.
func TestRevokedSignatureKeyNotRevivedTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	cfg := env.cfg
	cfg.RevokeSignatureKeys = true
	b := openCfg(t, cfg)
	path := filepath.Join(t.TempDir(), "catalog.db")
	var events eventLog
	opts := keystore.Options{EpochPerRetirement: true, OnEvent: events.add}
	st, err := keystore.Open(ctx, path, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	spec := keystore.KeySpec{Role: keystore.RoleSignature, Algorithm: keystore.ECDSAP256}
	gone, err := st.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := st.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if gone.Epoch == "" || gone.Epoch != kept.Epoch || gone.DeviceRef[0] != blobKeyRevoke || kept.DeviceRef[0] != blobKeyRevoke {
		t.Fatalf("deleted key in epoch %q (blob 0x%02x), kept key in %q (blob 0x%02x)", gone.Epoch, gone.DeviceRef[0], kept.Epoch, kept.DeviceRef[0])
	}
	if err := trySign(ctx, t, b, gone.DeviceRef, gone.PublicKey, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Delete(ctx, gone.ID, false); err != nil {
		t.Fatal(err)
	}
	if r, _ := st.Get(gone.ID); len(r.Revocation) == 0 {
		t.Fatalf("deleted record keeps no revocation: %+v", r)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatalf("start with the old catalog: %v", err)
	}
	defer st.Close()
	r, err := st.Get(gone.ID)
	if err != nil || r.State != keystore.StateDestroyed || !strings.Contains(r.RetiredWhy, "older than the device") {
		t.Fatalf("deleted key in the old catalog after start: %+v %v", r, err)
	}
	if e := events.find(keystore.EventRetired, gone.ID); e == nil {
		t.Fatal("no audit event for the key retired at start-up")
	}
	if _, err := st.Signer(ctx, gone.ID); !errors.Is(err, keystore.ErrNotActive) || !strings.Contains(err.Error(), "older than the device") {
		t.Fatalf("signer of the deleted key: %v", err)
	}
	// Even bypassing the catalog, the blob cannot sign.
	if err := trySign(ctx, t, b, gone.DeviceRef, gone.PublicKey, keystore.ECDSAP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("sign with the old blob: %v", err)
	} else {
		t.Logf("sign with the old blob: %v", err)
	}
	if err := trySign(ctx, t, b, kept.DeviceRef, kept.PublicKey, keystore.ECDSAP256); err != nil {
		t.Fatalf("the other key of the epoch: %v", err)
	}
}

// TestSignatureKeyBitTPM: signature keys bound to a bit sign (the policy
// session kept across signatures, keys and curves, ECDH's own sessions in
// between), are attested, and once one is destroyed it fails while the
// others go on signing.
func TestSignatureKeyBitTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	cfg := env.cfg
	cfg.RevokeSignatureKeys = true
	cfg.HealthInterval = time.Hour // the idle check ends the kept session
	b := openCfg(t, cfg)
	type key struct {
		alg      keystore.Algorithm
		ref, pub []byte
	}
	var keys []key
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDSAP256} {
		ref, pub, err := b.Generate(ctx, "k", alg)
		if err != nil {
			t.Fatal(err)
		}
		if ref[0] != blobKeyRevoke {
			t.Fatalf("%s key: blob 0x%02x, want 0x%02x", alg, ref[0], blobKeyRevoke)
		}
		keys = append(keys, key{alg, ref, pub})
	}
	eref, _, err := b.Generate(ctx, "e", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if err := trySign(ctx, t, b, keys[0].ref, keys[0].pub, keys[0].alg); err != nil {
		t.Fatal(err)
	}
	first := b.signSess.Handle()
	for _, k := range keys {
		if err := trySign(ctx, t, b, k.ref, k.pub, k.alg); err != nil {
			t.Fatalf("%s: %v", k.alg, err)
		}
	}
	if b.signSess == nil || b.signSess.Handle() != first {
		t.Fatalf("the policy session was not kept across signatures (0x%08x, then %v)", uint32(first), b.signSess)
	}
	if _, err := b.ECDH(ctx, eref, keystore.ECDHP256, peer.PublicKey().Bytes()); err != nil {
		t.Fatal(err)
	}
	if b.signSess != nil {
		t.Fatal("the signing session outlived another session")
	}
	for range 3 {
		for _, k := range keys {
			if err := trySign(ctx, t, b, k.ref, k.pub, k.alg); err != nil {
				t.Fatalf("%s: %v", k.alg, err)
			}
		}
		if _, err := b.ECDH(ctx, eref, keystore.ECDHP256, peer.PublicKey().Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range keys {
		if err := b.Check(ctx, k.ref, k.alg); err != nil {
			t.Fatalf("check %s: %v", k.alg, err)
		}
		n := nonce(t, 32)
		a, err := b.Attest(ctx, k.ref, k.alg, n)
		if err != nil {
			t.Fatalf("attest %s: %v", k.alg, err)
		}
		if err := attest.VerifyCertify(a, k.pub, n); err != nil {
			t.Fatalf("verify attestation of %s: %v", k.alg, err)
		}
	}
	if err := b.Destroy(ctx, keys[0].ref); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := trySign(ctx, t, b, keys[0].ref, keys[0].pub, keys[0].alg); !errors.Is(err, keystore.ErrRevoked) {
			t.Fatalf("sign after destroy: %v", err)
		}
		// A failed signature leaves the next one, with another key, intact.
		if err := trySign(ctx, t, b, keys[2].ref, keys[2].pub, keys[2].alg); err != nil {
			t.Fatalf("another key after a refused signature: %v", err)
		}
	}
	if err := b.Check(ctx, keys[0].ref, keys[0].alg); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("check after destroy: %v", err)
	}
}

// TestSignatureKeyBitSettingTPM: by default signature keys get no bit
// (ECDH keys do); a key made with the bit keeps it, and works and is
// revoked, after the setting is turned back off.
func TestSignatureKeyBitSettingTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	ref, pub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil || ref[0] != blobKey {
		t.Fatalf("default signature key: blob 0x%02x, %v", ref[0], err)
	}
	if err := trySign(ctx, t, b, ref, pub, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if eref, _, err := b.Generate(ctx, "e", keystore.ECDHP256); err != nil || eref[0] != blobKeyRevoke {
		t.Fatalf("default ECDH key: blob 0x%02x, %v", eref[0], err)
	}
	b.Close()
	cfg := env.cfg
	cfg.RevokeSignatureKeys = true
	b = openCfg(t, cfg)
	bound, bpub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil || bound[0] != blobKeyRevoke {
		t.Fatalf("signature key with the setting: %v", err)
	}
	b.Close()
	b = env.open(t)
	if err := b.Check(ctx, bound, keystore.ECDSAP256); err != nil {
		t.Fatalf("check with the setting off: %v", err)
	}
	if err := trySign(ctx, t, b, bound, bpub, keystore.ECDSAP256); err != nil {
		t.Fatalf("sign with the setting off: %v", err)
	}
	if err := trySign(ctx, t, b, ref, pub, keystore.ECDSAP256); err != nil {
		t.Fatalf("key without a bit: %v", err)
	}
	if err := b.Destroy(ctx, bound); err != nil {
		t.Fatal(err)
	}
	if err := trySign(ctx, t, b, bound, bpub, keystore.ECDSAP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("sign after destroy: %v", err)
	}
}

// TestSpentBudgetNotedForSignatureKeysTPM: once the revocation budget is
// spent, the per-role note (GetInfo, mlskeyctl status) names the
// signature role too when signature keys get bits, and only then.
func TestSpentBudgetNotedForSignatureKeysTPM(t *testing.T) {
	ctx := context.Background()
	for _, all := range []bool{false, true} {
		cfg := swtpmEnv(t).cfg // a fresh TPM: the first run spends its budget
		cfg.RevocationIndices = 1
		cfg.RevokeSignatureKeys = all
		b := openCfg(t, cfg)
		st, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), b, keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, why := st.Availability(keystore.RoleSignature, keystore.ECDSAP256); why != "" {
			t.Fatalf("all=%v: note before the budget is spent: %s", all, why)
		}
		for i := 0; b.RevocationNote() == ""; i++ {
			if i > revBits {
				t.Fatalf("all=%v: the budget of one index is not spent after %d keys", all, i)
			}
			if _, _, err := b.Generate(ctx, "k", keystore.ECDHP256); err != nil {
				t.Fatal(err)
			}
		}
		_, why := st.Availability(keystore.RoleSignature, keystore.ECDSAP256)
		if all != strings.Contains(why, "no per-key revocation") {
			t.Fatalf("all=%v: signature role note %q", all, why)
		}
		if _, why := st.Availability(keystore.RoleInit, keystore.ECDHP256); !strings.Contains(why, "no per-key revocation") {
			t.Fatalf("all=%v: init role note %q", all, why)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
}
