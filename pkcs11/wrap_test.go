package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestWrapProbe: SoftHSM 2.6.1 round-trips NIST-curve keys through AES-KWP
// but not its Edwards-typed X25519 keys, and the probe says why.
func TestWrapProbe(t *testing.T) {
	b := openBackend(t, newToken(t))
	for _, alg := range []keystore.Algorithm{keystore.ECDHP256, keystore.ECDHP384, keystore.ECDHP521} {
		if ok, why := b.WrapSupport(alg); !ok {
			t.Errorf("%s: not wrappable: %s", alg, why)
		}
	}
	ok, why := b.WrapSupport(keystore.X25519)
	t.Logf("x25519: %v %s", ok, why)
	if ok {
		t.Skip("this SoftHSM unwraps X25519 keys; the rest of the test is for 2.6.1")
	}
	if why == "" {
		t.Error("no reason for x25519")
	}
	trusted, note := b.WrapTrust()
	t.Logf("trusted=%v: %s", trusted, note)
	if ok, _ := b.WrapSupport(keystore.ECDSAP256); ok {
		t.Error("a signature algorithm is reported wrappable")
	}
}

// TestWrappedKey: a wrapped key derives what Go derives, leaves no object
// on the token, moves to another epoch, refuses another record's public
// key and another id's blob, and dies with its epoch.
func TestWrappedKey(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	for _, e := range []string{"wepoch-a", "wepoch-b"} {
		if err := b.NewEpoch(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	before := countObjects(t, b)
	alg := keystore.ECDHP256
	blob, pub, err := b.GenerateWrapped(ctx, "wepoch-a", "k1", alg)
	if err != nil {
		t.Fatal(err)
	}
	blob2, pub2, err := b.GenerateWrapped(ctx, "wepoch-a", "k2", alg)
	if err != nil {
		t.Fatal(err)
	}
	after := countObjects(t, b)
	// The first key of an epoch makes its wrapping key; nothing else stays.
	if after != before+1 {
		t.Errorf("token objects: %d before, %d after two wrapped keys; want one wrapping key more", before, after)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	pk, _ := ecdh.P256().NewPublicKey(pub)
	want, _ := peer.ECDH(pk)
	z, err := b.ECDHWrapped(ctx, blob, "k1", alg, pub, peer.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(z, want) {
		t.Fatal("wrapped ECDH differs from crypto/ecdh")
	}
	// Another record's blob (with this record's public key) is refused.
	if _, err := b.ECDHWrapped(ctx, blob2, "k1", alg, pub, peer.PublicKey().Bytes()); !errors.Is(err, ErrWrappedBlob) {
		t.Errorf("blob of k2 used as k1: %v, want ErrWrappedBlob", err)
	}
	_ = pub2
	moved, err := b.RewrapIn(ctx, "wepoch-b", blob, "k1", alg, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DestroyEpoch(ctx, "wepoch-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ECDHWrapped(ctx, blob, "k1", alg, pub, peer.PublicKey().Bytes()); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Errorf("blob of a destroyed epoch: %v, want ErrEpochDestroyed", err)
	}
	z, err = b.ECDHWrapped(ctx, moved, "k1", alg, pub, peer.PublicKey().Bytes())
	if err != nil || !bytes.Equal(z, want) {
		t.Fatalf("rewrapped key: %v", err)
	}
	// A blob whose header names another epoch does not unwrap under it.
	forged := append(wrapHeader("wepoch-b"), blob[len(wrapHeader("wepoch-a")):]...)
	if _, err := b.ECDHWrapped(ctx, forged, "k1", alg, pub, peer.PublicKey().Bytes()); !errors.Is(err, ErrWrappedBlob) {
		t.Errorf("blob of another wrapping key: %v, want ErrWrappedBlob", err)
	}
	if _, _, err := b.GenerateWrapped(ctx, "wepoch-a", "k3", alg); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Errorf("generate in a destroyed epoch: %v, want ErrEpochDestroyed", err)
	}
}

// TestWrappedKeyOtherToken: a blob from another token does not unwrap,
// even under an epoch of the same name.
func TestWrappedKeyOtherToken(t *testing.T) {
	ctx := context.Background()
	b1, err := Open(ctx, newToken(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.NewEpoch(ctx, "same"); err != nil {
		t.Fatal(err)
	}
	blob, pub, err := b1.GenerateWrapped(ctx, "same", "k1", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := openBackend(t, newToken(t))
	if err := b2.NewEpoch(ctx, "same"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b2.GenerateWrapped(ctx, "same", "k2", keystore.ECDHP256); err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := b2.ECDHWrapped(ctx, blob, "k1", keystore.ECDHP256, pub, peer.PublicKey().Bytes()); !errors.Is(err, ErrWrappedBlob) {
		t.Errorf("blob of another token: %v, want ErrWrappedBlob", err)
	}
}

// TestPlantedWrapKeyRefused: a wrapping key that can also encrypt (or
// was imported) is not used.
func TestPlantedWrapKeyRefused(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	if err := b.NewEpoch(ctx, "planted"); err != nil {
		t.Fatal(err)
	}
	err := b.withSession(ctx, "test", func(s p11.SessionHandle) error {
		tmpl := wrapKeyTemplate("planted", true, false)
		for i, a := range tmpl {
			if a.Type == p11.CKA_ENCRYPT {
				tmpl[i] = p11.NewAttribute(p11.CKA_ENCRYPT, true)
			}
		}
		_, err := b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, tmpl)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.GenerateWrapped(ctx, "planted", "k1", keystore.ECDHP256); !errors.Is(err, ErrNotProtected) {
		t.Errorf("planted wrapping key: %v, want ErrNotProtected", err)
	}
	// Start-up's listing refuses it too (and so the start).
	if _, err := b.Epochs(ctx); !errors.Is(err, ErrNotProtected) {
		t.Errorf("Epochs with a planted wrapping key: %v, want ErrNotProtected", err)
	}
}

func countObjects(t *testing.T, b *Backend) int {
	t.Helper()
	var n int
	err := b.withSession(context.Background(), "test", func(s p11.SessionHandle) error {
		hs, err := b.findAll(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, true)})
		n = len(hs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReconnectProbesWrapping: a reconnection probes key wrapping again.
// A token that still wraps what it wrapped at start-up serves wrapped keys
// as before; one that lost an algorithm it had (here: the start-up state
// claims X25519, which SoftHSM cannot wrap) is refused, and what GetInfo
// was told stays as it was.
func TestReconnectProbesWrapping(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	if err := b.NewEpoch(ctx, "wepoch-r"); err != nil {
		t.Fatal(err)
	}
	blob, pub, err := b.GenerateWrapped(ctx, "wepoch-r", "k1", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.reconnect(); err != nil {
		t.Fatalf("reconnect to the same token: %v", err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := b.ECDHWrapped(ctx, blob, "k1", keystore.ECDHP256, pub, peer.PublicKey().Bytes()); err != nil {
		t.Fatalf("wrapped key after the reconnection: %v", err)
	}

	b.sealMu.Lock()
	b.wrap.algs[keystore.X25519] = true
	b.sealMu.Unlock()
	err = b.reconnect()
	if err == nil || !strings.Contains(err.Error(), "without key wrapping for x25519") {
		t.Fatalf("reconnect to a token that lost wrapping: %v", err)
	}
	b.sealMu.RLock()
	kept := b.wrap.algs[keystore.X25519]
	b.sealMu.RUnlock()
	if !kept {
		t.Error("the start-up wrapping state was replaced by the failed probe's")
	}
}
