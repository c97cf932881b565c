package tpm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

func ecdhWith(ctx context.Context, st *keystore.Store, id string) error {
	k, err := st.DecryptionKey(ctx, id)
	if err != nil {
		return err
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	_, err = k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
	return err
}

func consume(ctx context.Context, st *keystore.Store, id string) error {
	_, err := st.UseInitKey(ctx, id, func(k any) error {
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
		return err
	})
	return err
}

type eventLog struct {
	mu sync.Mutex
	ev []keystore.Event
}

func (l *eventLog) add(e keystore.Event) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }

func (l *eventLog) find(kind keystore.EventKind, id string) *keystore.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.ev {
		if e.Kind == kind && (id == "" || len(e.KeyIDs) > 0 && e.KeyIDs[0] == id) {
			return &e
		}
	}
	return nil
}

// TestRevokedInitKeyNotRevivedTPM: an init key consumed while its epoch is
// pinned by another active key (the leaf encryption key of the same
// KeyPackage) cannot be used from an old copy of the catalog: its
// revocation bit is set. The daemon starts with the old copy, retires the
// key in it, says why, and the same Welcome fails; the leaf key still works.
func TestRevokedInitKeyNotRevivedTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	path := filepath.Join(t.TempDir(), "catalog.db")
	var events eventLog
	opts := keystore.Options{EpochPerRetirement: true, OnEvent: events.add}
	st, err := keystore.Open(ctx, path, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err != nil {
		t.Fatal(err)
	}
	lk, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleLeafEncryption, Suite: 2, Algorithm: keystore.ECDHP256})
	if err != nil {
		t.Fatal(err)
	}
	if ik.Epoch == "" || ik.Epoch != lk.Epoch || ik.DeviceRef[0] != blobKeyRevoke {
		t.Fatalf("init key in epoch %q (blob 0x%02x), leaf key in %q", ik.Epoch, ik.DeviceRef[0], lk.Epoch)
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
	if err := consume(ctx, st, ik.ID); err != nil {
		t.Fatal(err)
	}
	if r, _ := st.Get(ik.ID); len(r.Revocation) == 0 || len(r.DeviceRef) != 0 {
		t.Fatalf("retired record: revocation %x, device ref %d bytes", r.Revocation, len(r.DeviceRef))
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
	r, err := st.Get(ik.ID)
	if err != nil || r.State != keystore.StateDestroyed || !strings.Contains(r.RetiredWhy, "older than the device") {
		t.Fatalf("init key in the old catalog after start: %+v %v", r, err)
	}
	if e := events.find(keystore.EventRetired, ik.ID); e == nil {
		t.Fatal("no audit event for the key retired at start-up")
	}
	if err := consume(ctx, st, ik.ID); !errors.Is(err, keystore.ErrNotActive) {
		t.Fatalf("the same Welcome again: %v", err)
	} else {
		t.Logf("the same Welcome again: %v", err)
	}
	if err := ecdhWith(ctx, st, lk.ID); err != nil {
		t.Fatalf("leaf key of the same epoch: %v", err)
	}
	// Even bypassing the catalog, the blob is dead on the TPM.
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := b.ECDH(ctx, ik.DeviceRef, keystore.ECDHP256, peer.PublicKey().Bytes()); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("ECDH with the old blob: %v", err)
	}
}

// TestRevocationAfterCrashTPM: the catalog committed the consumption but
// the bit was not set (the device call failed, then the process ended):
// the record keeps the revocation and the next start sets the bit.
func TestRevocationAfterCrashTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	path := filepath.Join(t.TempDir(), "catalog.db")
	opts := keystore.Options{}
	st, err := keystore.Open(ctx, path, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err != nil {
		t.Fatal(err)
	}
	b.revHook = func(revRef) error { return errors.New("injected: process ended before TPM2_NV_SetBits") }
	if err := consume(ctx, st, ik.ID); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err == nil {
		t.Fatal("close reported nothing left on the device")
	}
	if err := b.Check(ctx, ik.DeviceRef, keystore.ECDHP256); err != nil {
		t.Fatalf("before the restart the bit should still be clear: %v", err)
	}
	b.revHook = nil
	if st, err = keystore.Open(ctx, path, b, opts); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := b.Check(ctx, ik.DeviceRef, keystore.ECDHP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("after the restart: %v", err)
	}
}

// TestRevocationIndexReuseTPM: with one index allowed, the 65th key falls
// back to the epoch rule and says so; once all 64 keys are retired the
// index is undefined, a new one is defined at the same handle, and a blob
// bound to the old one does not come back to life.
func TestRevocationIndexReuseTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	cfg := env.cfg
	cfg.RevocationIndices = 1
	b := openCfg(t, cfg)
	var refs [][]byte
	for i := range revBits {
		ref, _, err := b.Generate(ctx, "k", keystore.ECDHP256)
		if err != nil {
			t.Fatal(err)
		}
		if ref[0] != blobKeyRevoke {
			t.Fatalf("key %d: blob 0x%02x", i, ref[0])
		}
		refs = append(refs, ref)
	}
	if b.RevocationNote() != "" {
		t.Fatalf("note before the budget is used up: %s", b.RevocationNote())
	}
	ref, _, err := b.Generate(ctx, "k", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	if ref[0] != blobKey || !strings.Contains(b.RevocationNote(), "tpm-revocation-indices") {
		t.Fatalf("65th key: blob 0x%02x, note %q", ref[0], b.RevocationNote())
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := b.ECDH(ctx, refs[0], keystore.ECDHP256, peer.PublicKey().Bytes()); err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if err := b.Destroy(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := b.Reclaim(ctx)
	if err != nil || len(freed) != 1 {
		t.Fatalf("reclaim: %v %v", freed, err)
	}
	t.Logf("reclaimed: %v", freed)
	nref, _, err := b.Generate(ctx, "k", keystore.ECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	n, _, _ := decodeRev(nref[1:])
	o, _, _ := decodeRev(refs[0][1:])
	if nref[0] != blobKeyRevoke || n.h != o.h || n.bit != o.bit || string(n.name) == string(o.name) {
		t.Fatalf("new key: handle 0x%08x bit %d, old 0x%08x bit %d, names equal %v", uint32(n.h), n.bit, uint32(o.h), o.bit, string(n.name) == string(o.name))
	}
	if b.RevocationNote() != "" {
		t.Fatalf("note after a new index: %s", b.RevocationNote())
	}
	if _, err := b.ECDH(ctx, refs[0], keystore.ECDHP256, peer.PublicKey().Bytes()); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("old blob on the new index: %v", err)
	}
	if err := b.Check(ctx, refs[0], keystore.ECDHP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("check of the old blob: %v", err)
	}
	if _, err := b.ECDH(ctx, nref, keystore.ECDHP256, peer.PublicKey().Bytes()); err != nil {
		t.Fatalf("new key: %v", err)
	}
	// A catalog opened now belongs to an installation that does not own
	// the one index the budget allows (the keys above were made without
	// one): GetInfo's reasons say HPKE keys get no bit, from the start.
	st, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if p, why := st.Availability(keystore.RoleInit, keystore.ECDHP256); p != keystore.ProtectionHardware || !strings.Contains(why, "no per-key revocation") {
		t.Fatalf("availability: %s %q", p, why)
	} else {
		t.Logf("availability: %s: %s", p, why)
	}
	if p, why := st.Availability(keystore.RoleSignature, keystore.ECDSAP256); p != keystore.ProtectionHardware || why != "" {
		t.Fatalf("signature availability: %s %q", p, why)
	}
}

// TestRevocationOffKeepsBoundKeysTPM: turning the bits off (or lowering
// the budget) leaves the keys already bound to an index working, passing
// their start-up check, and revocable.
func TestRevocationOffKeepsBoundKeysTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	ref, _, err := b.Generate(ctx, "k", keystore.ECDHP256)
	if err != nil || ref[0] != blobKeyRevoke {
		t.Fatalf("generate: %v", err)
	}
	b.Close()
	cfg := env.cfg
	cfg.RevocationIndices = -1
	b = openCfg(t, cfg)
	if err := b.Check(ctx, ref, keystore.ECDHP256); err != nil {
		t.Fatalf("check with the bits off: %v", err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := b.ECDH(ctx, ref, keystore.ECDHP256, peer.PublicKey().Bytes()); err != nil {
		t.Fatal(err)
	}
	if nref, _, err := b.Generate(ctx, "k", keystore.ECDHP256); err != nil || nref[0] != blobKey {
		t.Fatalf("new key with the bits off: %v", err)
	}
	if err := b.Destroy(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(ctx, ref, keystore.ECDHP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("check after destroy: %v", err)
	}
}

// TestRevocationReclaimAuditedTPM: through the keystore, once the 64 keys
// of an index are consumed the sweep undefines it and reports it for the
// audit log; the next key is bound to a new index at the same handle.
func TestRevocationReclaimAuditedTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	cfg := env.cfg
	cfg.RevocationIndices = 1
	b := openCfg(t, cfg)
	var events eventLog
	st, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), b, keystore.Options{OnEvent: events.add})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var first []byte
	for i := range revBits {
		r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.DeviceRef
		}
		if err := consume(ctx, st, r.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	e := events.find(keystore.EventReclaimed, "")
	if e == nil || !strings.Contains(e.Reason, "0x01004d00") {
		t.Fatalf("no reclaim event: %+v", events.ev)
	}
	r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
	if err != nil {
		t.Fatal(err)
	}
	n, _, _ := decodeRev(r.DeviceRef[1:])
	o, _, _ := decodeRev(first[1:])
	if n.h != o.h || bytes.Equal(n.name, o.name) {
		t.Fatalf("new key on 0x%08x, first on 0x%08x", uint32(n.h), uint32(o.h))
	}
	if err := b.Check(ctx, first, keystore.ECDHP256); !errors.Is(err, keystore.ErrRevoked) {
		t.Fatalf("first key after reclaim: %v", err)
	}
}

// TestRevocationTwoInstallationsTPM: two catalogs on one TPM never share
// an index, since neither knows which bits the other's keys hold.
func TestRevocationTwoInstallationsTPM(t *testing.T) {
	env := swtpmEnv(t)
	ctx := context.Background()
	b := env.open(t)
	mk := func() (*keystore.Store, revRef) {
		st, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), b, keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 2, Algorithm: keystore.ECDHP256})
		if err != nil {
			t.Fatal(err)
		}
		rv, _, err := decodeRev(r.DeviceRef[1:])
		if err != nil {
			t.Fatal(err)
		}
		return st, rv
	}
	st1, r1 := mk()
	st1.Close()
	st2, r2 := mk()
	defer st2.Close()
	if r1.h == r2.h {
		t.Fatalf("both installations' keys on index 0x%08x (bits %d and %d)", uint32(r1.h), r1.bit, r2.bit)
	}
}
