package keystore_test

// Destruction tests against a SoftHSM token: what "destroyed" means is
// what the token still holds, so these look at the token, not the catalog.

import (
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
	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// hookedBackend is a SoftHSM backend whose Destroy and Generate can run a
// test's hook first, to cancel or fail at exactly that point.
type hookedBackend struct {
	*pkcs11.Backend
	mu        sync.Mutex
	onDestroy func(ref []byte) error
	onGen     func() error
}

func (h *hookedBackend) Destroy(ctx context.Context, ref []byte) error {
	h.mu.Lock()
	hook := h.onDestroy
	h.mu.Unlock()
	if hook != nil {
		if err := hook(ref); err != nil {
			return err
		}
	}
	return h.Backend.Destroy(ctx, ref)
}

func (h *hookedBackend) Generate(ctx context.Context, id string, alg keystore.Algorithm) ([]byte, []byte, error) {
	h.mu.Lock()
	hook := h.onGen
	h.mu.Unlock()
	if hook != nil {
		if err := hook(); err != nil {
			return nil, nil, err
		}
	}
	return h.Backend.Generate(ctx, id, alg)
}

func (h *hookedBackend) setDestroy(f func(ref []byte) error) {
	h.mu.Lock()
	h.onDestroy = f
	h.mu.Unlock()
}

// onToken reports which of ids the token still holds.
func (h *hookedBackend) onToken(t *testing.T, ids ...string) map[string]bool {
	t.Helper()
	dev, err := h.Backend.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range dev {
		for _, id := range ids {
			if k.ID == id {
				out[id] = true
			}
		}
	}
	return out
}

type softhsmEnv struct {
	be      *hookedBackend
	store   *keystore.Store
	catalog string
	opts    keystore.Options
}

func newSoftHSMStore(t *testing.T, opts keystore.Options) *softhsmEnv {
	t.Helper()
	if pkcs11.FindSoftHSM() == "" {
		if os.Getenv("MLSKEYD_REQUIRE_SOFTHSM") == "1" {
			t.Fatal("SoftHSM 2 is required (MLSKEYD_REQUIRE_SOFTHSM=1) but not installed")
		}
		t.Skip("SoftHSM 2 not installed (apt-get install softhsm2)")
	}
	dir := t.TempDir()
	b := newSoftHSMToken(t, dir, "keystore-test")
	env := &softhsmEnv{be: &hookedBackend{Backend: b}, catalog: filepath.Join(dir, "catalog.db"), opts: opts}
	env.open(t)
	return env
}

// newSoftHSMToken initialises a SoftHSM token named label in dir (which
// becomes the process's SoftHSM configuration) and opens a backend on it,
// closed when the test ends.
func newSoftHSMToken(t testing.TB, dir, label string) *pkcs11.Backend {
	t.Helper()
	h, err := pkcs11.InitSoftHSM(dir, label)
	if err != nil {
		t.Fatal(err)
	}
	pin := pkcs11.RandomPIN()
	if err := h.InitToken(pkcs11.RandomPIN(), pin); err != nil {
		t.Fatal(err)
	}
	b, err := pkcs11.Open(context.Background(), h.Config(pin))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func (e *softhsmEnv) open(t *testing.T) {
	t.Helper()
	s, err := keystore.Open(context.Background(), e.catalog, e.be, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	e.store = s
	t.Cleanup(func() { s.Close() })
}

// keyPackages commits a signature key and n KeyPackages' init and leaf
// keys the way CreateKeyPackages does.
func keyPackages(t *testing.T, s *keystore.Store, n int) (sig *keystore.Record, inits, leaves []*keystore.Record) {
	t.Helper()
	specs := []keystore.KeySpec{{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519}}
	for range n {
		specs = append(specs,
			keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519},
			keystore.KeySpec{Role: keystore.RoleLeafEncryption, Suite: 1, Algorithm: keystore.X25519})
	}
	b := s.NewBatch()
	recs, err := b.Generate(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	sig = recs[0]
	for i := range n {
		in, lf := recs[1+2*i], recs[2+2*i]
		ref := make([]byte, 32)
		rand.Read(ref)
		for _, r := range []*keystore.Record{in, lf} {
			r.KeyPackageRef, r.SignatureKeyID = ref, sig.ID
		}
		inits, leaves = append(inits, in), append(leaves, lf)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	return sig, inits, leaves
}

func openWelcome(k any) error {
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	_, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
	return err
}

// A caller that gives up at the moment of destruction does not leave the
// key on the token: Delete and UseInitKey destroy with a context of their
// own.
func TestDestructionIgnoresCallerCancellation(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{})
	sig, inits, _ := keyPackages(t, e.store, 1)
	other, err := e.store.Create(context.Background(), keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	e.be.setDestroy(func([]byte) error { cancel(); return nil })
	if _, _, err := e.store.Delete(ctx, other.ID, false); err != nil {
		t.Fatal(err)
	}
	if e.be.onToken(t, other.ID)[other.ID] {
		t.Fatal("Delete cancelled at destruction left the key on the token")
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	if _, err := e.store.UseInitKey(ctx, inits[0].ID, openWelcome); err != nil {
		t.Fatal(err)
	}
	if e.be.onToken(t, inits[0].ID)[inits[0].ID] {
		t.Fatal("UseInitKey cancelled at destruction left the consumed init key on the token")
	}
	if !e.be.onToken(t, sig.ID)[sig.ID] {
		t.Fatal("the signature key went too")
	}
}

// Sweep destroys device keys whose record says consumed or destroyed, and
// never a device key the catalog does not know (a batch in progress).
func TestSweepDestroysOnlyRetiredKeys(t *testing.T) {
	var mu sync.Mutex
	var events []keystore.Event
	e := newSoftHSMStore(t, keystore.Options{OnEvent: func(d keystore.Event) {
		if d.Kind != keystore.EventDestroyed {
			return // the binding at the first start
		}
		mu.Lock()
		events = append(events, d)
		mu.Unlock()
	}})
	ctx := context.Background()
	_, inits, _ := keyPackages(t, e.store, 2)
	e.be.setDestroy(func([]byte) error { return errors.New("CKR_DEVICE_ERROR") })
	if _, err := e.store.UseInitKey(ctx, inits[0].ID, openWelcome); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.store.Delete(ctx, inits[1].ID, false); err != nil {
		t.Fatal(err)
	}
	if r, _ := e.store.Get(inits[0].ID); r.State != keystore.StateConsumed {
		t.Fatalf("init key after use: %s", r.State)
	}
	if got := e.be.onToken(t, inits[0].ID, inits[1].ID); len(got) != 2 {
		t.Fatalf("the failing device destroyed %v", got)
	}
	e.be.setDestroy(nil)

	pending := e.store.NewBatch()
	made, err := pending.Generate(ctx, []keystore.KeySpec{{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.store.Sweep(ctx)
	if err != nil || n != 2 {
		t.Fatalf("sweep destroyed %d keys, err %v; want 2", n, err)
	}
	if got := e.be.onToken(t, inits[0].ID, inits[1].ID, made[0].ID); got[inits[0].ID] || got[inits[1].ID] || !got[made[0].ID] {
		t.Fatalf("after the sweep the token holds %v; want only the uncommitted %s", got, made[0].ID)
	}
	if err := pending.Commit(); err != nil {
		t.Fatalf("the batch lost a key to the sweep: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 || events[0].Kind != keystore.EventDestroyed || events[0].Err != nil || !strings.Contains(events[0].Reason, "sweep") {
		t.Fatalf("OnEvent saw %+v", events)
	}
	if n, err := e.store.Sweep(ctx); n != 0 || err != nil {
		t.Fatalf("second sweep: %d, %v", n, err)
	}
}

// A destruction that keeps failing is retried at Close and, still failing,
// reported by it; the next Open removes the key.
func TestCloseReportsKeysLeftOnTheDevice(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{})
	ctx := context.Background()
	r, err := e.store.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	e.be.setDestroy(func([]byte) error { return errors.New("CKR_DEVICE_ERROR") })
	if _, _, err := e.store.Delete(ctx, r.ID, false); err != nil {
		t.Fatal(err)
	}
	err = e.store.Close()
	if err == nil || !strings.Contains(err.Error(), "1 device keys could not be destroyed") || !strings.Contains(err.Error(), r.ID) {
		t.Fatalf("Close with a key left on the device: %v", err)
	}
	e.be.setDestroy(nil)
	e.open(t)
	if e.be.onToken(t, r.ID)[r.ID] {
		t.Fatal("the next start did not remove the key")
	}
	if err := e.store.Close(); err != nil {
		t.Fatalf("Close with nothing left: %v", err)
	}

	// A failure that passes is retried at Close.
	e.open(t)
	r, _ = e.store.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519})
	e.be.setDestroy(func([]byte) error { return errors.New("CKR_SESSION_HANDLE_INVALID") })
	e.store.Delete(ctx, r.ID, false)
	e.be.setDestroy(nil)
	if err := e.store.Close(); err != nil || e.be.onToken(t, r.ID)[r.ID] {
		t.Fatalf("Close did not retry the destruction: %v", err)
	}
}

// Shutdown aborts a batch that is still generating: what it made is
// destroyed before Generate returns, and no new batch starts.
func TestShutdownAbortsGeneratingBatch(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{GenerateParallelism: 2})
	ctx := context.Background()
	before, _ := e.be.Backend.List(ctx)
	var mu sync.Mutex
	n := 0
	e.be.mu.Lock()
	e.be.onGen = func() error {
		mu.Lock()
		defer mu.Unlock()
		if n++; n == 6 {
			e.store.Shutdown()
		}
		return nil
	}
	e.be.mu.Unlock()
	specs := make([]keystore.KeySpec, 200)
	for i := range specs {
		specs[i] = keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519}
	}
	b := e.store.NewBatch()
	_, err := b.Generate(ctx, specs)
	if !errors.Is(err, keystore.ErrShuttingDown) {
		t.Fatalf("batch across Shutdown: %v", err)
	}
	b.Abort(ctx)
	after, _ := e.be.Backend.List(ctx)
	if len(after) != len(before) {
		t.Fatalf("token holds %d keys after the aborted batch, %d before", len(after), len(before))
	}
	if _, err := e.store.NewBatch().Generate(ctx, specs[:1]); !errors.Is(err, keystore.ErrShuttingDown) {
		t.Fatalf("batch after Shutdown: %v", err)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
}

// Deleting a signature key that unused KeyPackages use is refused, or with
// cascade takes their init and leaf keys with it; a used KeyPackage's leaf
// key, which serves its group, stays.
func TestDeleteSignatureKeyWithUnusedKeyPackages(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{})
	ctx := context.Background()
	sig, inits, leaves := keyPackages(t, e.store, 3)
	if _, err := e.store.UseInitKey(ctx, inits[0].ID, openWelcome); err != nil {
		t.Fatal(err)
	}

	_, _, err := e.store.Delete(ctx, sig.ID, false)
	var inUse *keystore.InUseError
	if !errors.As(err, &inUse) || inUse.KeyPackages != 2 || !strings.Contains(err.Error(), "2 unused KeyPackages use this key; delete them first or pass cascade") {
		t.Fatalf("delete without cascade: %v", err)
	}
	for _, r := range []*keystore.Record{sig, inits[1], leaves[1], inits[2], leaves[2], leaves[0]} {
		if got, _ := e.store.Get(r.ID); got.State != keystore.StateActive || !e.be.onToken(t, r.ID)[r.ID] {
			t.Fatalf("refused delete changed key %s (%s)", r.ID, got.State)
		}
	}

	del, cascaded, err := e.store.Delete(ctx, sig.ID, true)
	if err != nil || del.State != keystore.StateDestroyed || len(cascaded) != 4 {
		t.Fatalf("cascade: %v, %d keys with it", err, len(cascaded))
	}
	gone := []string{sig.ID, inits[1].ID, leaves[1].ID, inits[2].ID, leaves[2].ID}
	if left := e.be.onToken(t, gone...); len(left) != 0 {
		t.Fatalf("token still holds %v", left)
	}
	for _, id := range gone {
		if got, _ := e.store.Get(id); got.State != keystore.StateDestroyed {
			t.Fatalf("key %s is %s", id, got.State)
		}
	}
	if got, _ := e.store.Get(leaves[0].ID); got.State != keystore.StateActive || !e.be.onToken(t, leaves[0].ID)[leaves[0].ID] {
		t.Fatal("the leaf key of the used KeyPackage was destroyed")
	}
	if _, err := e.store.UseInitKey(ctx, inits[1].ID, openWelcome); !errors.Is(err, keystore.ErrNotActive) {
		t.Fatalf("Welcome to a cascaded KeyPackage: %v", err)
	}
}

// Deleting an init key with cascade takes its KeyPackage's leaf key too;
// without, only the init key goes.
func TestDeleteInitKeyCascade(t *testing.T) {
	e := newSoftHSMStore(t, keystore.Options{})
	ctx := context.Background()
	sig, inits, leaves := keyPackages(t, e.store, 2)
	if _, cascaded, err := e.store.Delete(ctx, inits[0].ID, false); err != nil || len(cascaded) != 0 {
		t.Fatalf("delete init key: %v, %d with it", err, len(cascaded))
	}
	if got, _ := e.store.Get(leaves[0].ID); got.State != keystore.StateActive {
		t.Fatal("delete without cascade took the leaf key")
	}
	_, cascaded, err := e.store.Delete(ctx, inits[1].ID, true)
	if err != nil || len(cascaded) != 1 || cascaded[0].ID != leaves[1].ID {
		t.Fatalf("delete init key with cascade: %v, %v", err, cascaded)
	}
	if left := e.be.onToken(t, inits[0].ID, inits[1].ID, leaves[1].ID); len(left) != 0 {
		t.Fatalf("token still holds %v", left)
	}
	// No unused KeyPackage is left: the signature key deletes without cascade.
	if _, _, err := e.store.Delete(ctx, sig.ID, false); err != nil {
		t.Fatal(err)
	}
}
