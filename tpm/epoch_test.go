package tpm

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
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

func TestEpochs(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		cfg := env.cfg
		cfg.EpochHandles = 2
		b := openCfg(t, cfg)
		// Loaded keys fill the transient slots: epoch commands must still
		// find room.
		for _, id := range []string{"k1", "k2", "k3"} {
			ref, _, err := b.Generate(ctx, id, keystore.ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		for _, e := range []string{"e1", "e2"} {
			if err := b.NewEpoch(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("NewEpoch: %v each", time.Since(start)/2)
		if err := b.NewEpoch(ctx, "e3"); !errors.Is(err, keystore.ErrEpochBudget) {
			t.Fatalf("third epoch with 2 handles: %v", err)
		}
		start = time.Now()
		b1, err := b.SealIn(ctx, "e1", []byte("one"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("SealIn: %v", time.Since(start))
		b2, err := b.SealIn(ctx, "e2", []byte("two"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if b1[0] != blobSealedEpoch || string(b1[2:4]) != "e1" {
			t.Fatalf("blob header %x", b1[:4])
		}
		start = time.Now()
		if pt, err := b.Unseal(ctx, b1, []byte("aad")); err != nil || string(pt) != "one" {
			t.Fatalf("Unseal: %q %v", pt, err)
		}
		t.Logf("Unseal: %v", time.Since(start))
		if _, err := b.Unseal(ctx, b1, []byte("other")); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("wrong aad: %v", err)
		}
		// Another epoch's name in the header: that parent cannot load it.
		moved := append([]byte{blobSealedEpoch, 2}, append([]byte("e2"), b1[4:]...)...)
		if _, err := b.Unseal(ctx, moved, []byte("aad")); err == nil {
			t.Fatal("blob opened under another epoch's parent")
		}
		start = time.Now()
		if err := b.DestroyEpoch(ctx, "e1"); err != nil {
			t.Fatal(err)
		}
		t.Logf("DestroyEpoch: %v", time.Since(start))
		if err := b.DestroyEpoch(ctx, "e1"); err != nil {
			t.Fatalf("destroying twice: %v", err)
		}
		if _, err := b.Unseal(ctx, b1, []byte("aad")); !errors.Is(err, keystore.ErrEpochDestroyed) {
			t.Fatalf("blob of a destroyed epoch: %v", err)
		}
		t.Logf("destroyed epoch: %v", err)
		if env.name == "swtpm" {
			b.Close()
			env.restart(t)
			b = openCfg(t, cfg)
			for _, id := range []string{"k4", "k5"} {
				ref, _, _ := b.Generate(ctx, id, keystore.ECDSAP256)
				if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
					t.Fatal(err)
				}
			}
		}
		ids, err := b.Epochs(ctx)
		if err != nil || !slices.Equal(ids, []string{"e2"}) {
			t.Fatalf("Epochs: %v %v", ids, err)
		}
		if pt, err := b.Unseal(ctx, b2, []byte("aad")); err != nil || string(pt) != "two" {
			t.Fatalf("Unseal after restart: %q %v", pt, err)
		}
		if err := b.DestroyEpoch(ctx, "e2"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRetiredSealedKeyGoneFromOldCatalogTPM: on swtpm, consume a sealed
// X25519 init key, put back a copy of the catalog from before: the key
// must not open again.
func TestRetiredSealedKeyGoneFromOldCatalogTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	path := filepath.Join(t.TempDir(), "catalog.db")
	opts := keystore.Options{EpochPerRetirement: true}
	st, err := keystore.Open(ctx, path, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519})
	if err != nil {
		t.Fatal(err)
	}
	if r.Protection != keystore.ProtectionSealed || r.Epoch == "" {
		t.Fatalf("%s key in epoch %q", r.Protection, r.Epoch)
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
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatal(err)
	}
	if err := use(st); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.WriteFile(path, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := use(st); !errors.Is(err, keystore.ErrEpochDestroyed) {
		t.Fatalf("second open from the old catalog: %v", err)
	} else {
		t.Logf("second open: %v", err)
	}
	// The epoch the newer catalog was using is unknown to this copy: it is
	// left alone (it may belong to another catalog), next to the new one.
	if ids, err := b.Epochs(ctx); err != nil || len(ids) != 2 || !slices.Contains(ids, st.Epoch()) {
		t.Fatalf("epochs left: %v %v, want the current one and the newer catalog's", ids, err)
	}
}

// TestRetiredHardwareKeyGoneFromOldCatalogTPM: a TPM-computed (P-256) init
// key lives under its epoch's parent. Once it is consumed and no other
// active key is in its epoch, the parent is evicted and an old copy of the
// catalog cannot use the key: start-up with that copy fails naming the key
// and why, as for a blob of another TPM. A key of an epoch that still has
// active keys keeps working: its epoch stays.
//
// It runs without revocation bits (RevocationIndices < 0), the rule that
// signature keys and keys beyond the bit budget follow; with bits,
// TestRevokedInitKeyNotRevivedTPM.
func TestRetiredHardwareKeyGoneFromOldCatalogTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	cfg := env.cfg
	cfg.RevocationIndices = -1
	b := openCfg(t, cfg)
	path := filepath.Join(t.TempDir(), "catalog.db")
	opts := keystore.Options{EpochPerRetirement: true}
	st, err := keystore.Open(ctx, path, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err != nil {
		t.Fatal(err)
	}
	if r.Protection != keystore.ProtectionHardware || r.Epoch == "" || r.DeviceRef[0] != blobKeyEpoch {
		t.Fatalf("%s key in epoch %q", r.Protection, r.Epoch)
	}
	st.Close()
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	use := func(st *keystore.Store, id string) error {
		_, err := st.UseInitKey(ctx, id, func(k any) error {
			peer, _ := ecdh.P256().GenerateKey(rand.Reader)
			_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
			return err
		})
		return err
	}
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatal(err)
	}
	// Two keys in the next epoch: retiring one leaves the epoch alive.
	k1, _ := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err := use(st, r.ID); err != nil {
		t.Fatal(err)
	}
	k2, _ := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	k3, _ := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err := use(st, k2.ID); err != nil {
		t.Fatal(err)
	}
	if err := use(st, k3.ID); err != nil {
		t.Fatalf("a key whose epoch-mate was retired: %v", err)
	}
	if err := use(st, k1.ID); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.WriteFile(path, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = keystore.Open(ctx, path, b, opts)
	if !errors.Is(err, keystore.ErrEpochDestroyed) || !strings.Contains(err.Error(), r.ID) {
		t.Fatalf("start with the old catalog: %v", err)
	}
	t.Logf("start with the old catalog: %v", err)
}

// TestAttestEpochKey: certifying a key under an epoch parent, with the
// loaded-key cache full, finds room for the parent, the key and the AK.
func TestAttestEpochKey(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		if err := b.NewEpoch(ctx, "att"); err != nil {
			t.Fatal(err)
		}
		var refs [][]byte
		for _, id := range []string{"a1", "a2", "a3"} {
			ref, _, err := b.GenerateIn(ctx, "att", id, keystore.ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, ref)
		}
		nonce := make([]byte, 20)
		for _, ref := range [][]byte{refs[0], refs[2], refs[2]} {
			if _, err := b.Attest(ctx, ref, keystore.ECDSAP256, nonce); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.DestroyEpoch(ctx, "att"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Attest(ctx, refs[2], keystore.ECDSAP256, nonce); !errors.Is(err, keystore.ErrEpochDestroyed) {
			t.Fatalf("attest a key of a destroyed epoch: %v", err)
		}
	})
}
