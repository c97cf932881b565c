package keystore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// events collects Options.OnEvent reports.
type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) ids(kind EventKind) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		if ev.Kind == kind {
			out = append(out, ev.KeyIDs...)
		}
	}
	slices.Sort(out)
	return out
}

func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

func TestOtherCatalogOnSameDeviceRefused(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, _ := openStore(t, be, Options{})
	k1, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	k2, _ := s.Create(ctx, KeySpec{Role: RoleInit, Algorithm: X25519})
	inst := s.Installation()
	if inst == "" || be.marker != inst {
		t.Fatalf("installation %q, device marker %q", inst, be.marker)
	}
	s.Close()

	other := filepath.Join(t.TempDir(), "other.db")
	_, err := Open(ctx, other, be, Options{})
	var be1 *BindingError
	if !errors.As(err, &be1) || !errors.Is(err, ErrBinding) || be1.DeviceID != inst || !be1.AdoptPossible {
		t.Fatalf("new catalog on a bound device: %v", err)
	}
	if !strings.Contains(err.Error(), inst) || strings.Contains(err.Error(), "\n") {
		t.Errorf("message does not name the device's installation on one line: %v", err)
	}
	if !be.has(k1.ID) || !be.has(k2.ID) {
		t.Fatal("refused start destroyed device keys")
	}
	if _, err := os.Stat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused start left a catalog at the wrong path: %v", err)
	}

	// Adoption takes the installation over; the keys it does not know are
	// quarantined as strays, not destroyed.
	ev := &events{}
	s2, err := Open(ctx, other, be, Options{AdoptDevice: true, OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Installation() != inst {
		t.Errorf("adopted installation %q, want %q", s2.Installation(), inst)
	}
	if !be.has(k1.ID) || !be.has(k2.ID) {
		t.Fatal("adoption destroyed device keys")
	}
	var strays []string
	for _, st := range s2.Strays() {
		strays = append(strays, st.ID)
	}
	if got, want := sorted(strays...), sorted(k1.ID, k2.ID); !slices.Equal(got, want) {
		t.Errorf("strays %v, want %v", got, want)
	}
	if got := ev.ids(EventQuarantined); !slices.Equal(got, sorted(k1.ID, k2.ID)) {
		t.Errorf("quarantine events %v", got)
	}
	if len(ev.ids(EventDestroyed)) != 0 {
		t.Errorf("destroy events %v", ev.ids(EventDestroyed))
	}
}

func TestCatalogOnOtherDeviceRefused(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()

	// A device without a marker, and one of another installation.
	bare := newFake()
	foreign := newFake()
	foreign.marker = "0123456789abcdef0123456789abcdef"
	for name, dev := range map[string]*fakeBackend{"unmarked": bare, "foreign": foreign} {
		_, err := Open(ctx, path, dev, Options{})
		if !errors.Is(err, ErrBinding) {
			t.Fatalf("%s device: %v", name, err)
		}
		if dev.marker != map[string]string{"unmarked": "", "foreign": foreign.marker}[name] {
			t.Errorf("%s device marker changed to %q", name, dev.marker)
		}
	}
	// Two installations never merge, even when adoption is allowed.
	if _, err := Open(ctx, path, foreign, Options{AdoptDevice: true}); !errors.Is(err, ErrBinding) {
		t.Fatalf("foreign device with adoption: %v", err)
	}

	// The catalog was not touched: the right device finds every key active.
	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r, _ := s.Get(k.ID); r.State != StateActive || !be.has(k.ID) {
		t.Fatalf("key after the refused starts: %+v", r)
	}
	sg, err := s.Signer(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sg.Sign(nil, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestAdoptUnmarkedDeviceQuarantinesMissing(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()

	bare := newFake()
	ev := &events{}
	s, err := Open(ctx, path, bare, Options{AdoptDevice: true, OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Get(k.ID); r.State != StateMissing {
		t.Fatalf("key on an adopted empty device is %s, want missing", r.State)
	}
	if _, err := s.Signer(ctx, k.ID); !errors.Is(err, ErrNotActive) {
		t.Fatalf("missing key usable: %v", err)
	}
	if got := ev.ids(EventQuarantined); !slices.Equal(got, []string{k.ID}) {
		t.Errorf("quarantine events %v", got)
	}
	res, err := s.Repair(ctx, RepairOptions{RetireMissing: true})
	if err != nil || !slices.Equal(res.RetiredMissing, []string{k.ID}) {
		t.Fatalf("repair: %+v %v", res, err)
	}
	if r, _ := s.Get(k.ID); r.State != StateDestroyed || r.RetiredAt.IsZero() {
		t.Fatalf("retired missing key: %+v", r)
	}
	s.Close()
}

func TestNewCatalogOnLegacyDeviceWithKeysRefused(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	// Keys from before installation ids: no marker on the device.
	be.Generate(ctx, "0001", Ed25519)
	_, err := Open(ctx, filepath.Join(t.TempDir(), "c.db"), be, Options{})
	if !errors.Is(err, ErrBinding) || be.marker != "" || !be.has("0001") {
		t.Fatalf("new catalog, unmarked device with keys: %v (marker %q)", err, be.marker)
	}
}

func TestFirstBindingInterruptedIsFinished(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := openCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	// The crash: pending in the catalog, marker on the device, no commit.
	c.metaPut(map[string]string{metaPending: "feedfeedfeedfeedfeedfeedfeedfeed"})
	be.marker = "feedfeedfeedfeedfeedfeedfeedfeed"
	c.close()
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Installation() != be.marker {
		t.Fatalf("installation %q", s.Installation())
	}
}

func TestReconcileDestroysOnlyJournalled(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	kept, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	orphans, _ := s.NewBatch().Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}})
	s.Close()
	// An object of this daemon's naming the journal does not list.
	be.Generate(ctx, "00ff", X25519)

	ev := &events{}
	s, err := Open(ctx, path, be, Options{OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if be.has(orphans[0].ID) {
		t.Error("journalled orphan not destroyed")
	}
	if !be.has("00ff") {
		t.Fatal("unjournalled stray destroyed")
	}
	if got := ev.ids(EventDestroyed); !slices.Equal(got, []string{orphans[0].ID}) {
		t.Errorf("destroy events %v", got)
	}
	if st := s.Strays(); len(st) != 1 || st[0].ID != "00ff" {
		t.Errorf("strays %+v", st)
	}
	if r, _ := s.Get(kept.ID); r.State != StateActive {
		t.Error("kept key damaged")
	}
	if j, _ := s.cat.journal(); len(j) != 0 {
		t.Errorf("journal not cleared: %v", j)
	}
	res, err := s.Repair(ctx, RepairOptions{DestroyStrays: true})
	if err != nil || !slices.Equal(res.DestroyedStrays, []string{"00ff"}) || be.has("00ff") {
		t.Fatalf("repair: %+v %v", res, err)
	}
	if len(s.Strays()) != 0 || !be.has(kept.ID) {
		t.Fatal("repair left strays or took a catalog key")
	}
	s.Close()
}

func TestRepairSparesBatchInProgress(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, _ := openStore(t, be, Options{})
	b := s.NewBatch()
	recs, err := b.Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Repair(ctx, RepairOptions{DestroyStrays: true})
	if err != nil || len(res.DestroyedStrays) != 0 || !be.has(recs[0].ID) {
		t.Fatalf("repair took a key of an uncommitted batch: %+v %v", res, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if j, _ := s.cat.journal(); len(j) != 0 {
		t.Errorf("commit left the journal entry: %v", j)
	}
}

func TestMissingKeyRestoredWhenBack(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()
	saved := be.keys[k.ID]
	delete(be.keys, k.ID) // the token briefly without it (a partial restore)
	s, _ = Open(ctx, path, be, Options{})
	if r, _ := s.Get(k.ID); r.State != StateMissing {
		t.Fatalf("state %s", r.State)
	}
	s.Close()
	be.keys[k.ID] = saved
	ev := &events{}
	s, _ = Open(ctx, path, be, Options{OnEvent: ev.add})
	defer s.Close()
	if r, _ := s.Get(k.ID); r.State != StateActive {
		t.Fatalf("state after the key came back: %s", r.State)
	}
	if got := ev.ids(EventRestored); !slices.Equal(got, []string{k.ID}) {
		t.Errorf("restore events %v", got)
	}
}

func TestLegacyMissingMarkIsNotDestroyed(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	// What older versions wrote after a start on the wrong token.
	s.cat.update(k.ID, func(r *Record) error { s.retire(r, StateDestroyed, whyMissingLegacy); return nil })
	s.Close()
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !be.has(k.ID) {
		t.Fatal("key wrongly marked destroyed was destroyed on the device")
	}
	if st := s.Strays(); len(st) != 1 || st[0].ID != k.ID {
		t.Fatalf("strays %+v", st)
	}
}

func TestAbortedBatchIsReported(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	ev := &events{}
	s, _ := openStore(t, be, Options{OnEvent: ev.add})
	b := s.NewBatch()
	recs, _ := b.Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}, {Role: RoleSignature, Algorithm: Ed25519}})
	b.Abort(ctx)
	if got := ev.ids(EventDestroyed); !slices.Equal(got, sorted(recs[0].ID, recs[1].ID)) {
		t.Fatalf("destroy events %v", got)
	}
	if j, _ := s.cat.journal(); len(j) != 0 {
		t.Errorf("abort left the journal entry: %v", j)
	}
}

func TestMissingListFollowsTheCatalog(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	a, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	b, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()
	be.Destroy(ctx, a.DeviceRef)
	be.Destroy(ctx, b.DeviceRef)
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if m, _ := s.Missing(); !slices.Equal(m, sorted(a.ID, b.ID)) {
		t.Fatalf("missing %v", m)
	}
	// Its owner deletes one: it is no longer missing, but destroyed.
	if _, _, err := s.Delete(ctx, a.ID, false); err != nil {
		t.Fatal(err)
	}
	if m, _ := s.Missing(); !slices.Equal(m, []string{b.ID}) {
		t.Fatalf("missing after a delete %v", m)
	}
	if r, _ := s.Get(a.ID); r.State != StateDestroyed {
		t.Fatalf("deleted missing key is %s", r.State)
	}
}

func TestAdoptionQuarantinesSealedKeysItCannotOpen(t *testing.T) {
	ctx := context.Background()
	be := newFake(X25519) // signature keys are sealed
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()
	if k.Protection != ProtectionSealed {
		t.Fatalf("protection %s", k.Protection)
	}

	other := newFake(X25519) // another sealing key
	s, err := Open(ctx, path, other, Options{AdoptDevice: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Get(k.ID); r.State != StateMissing || len(r.Sealed) == 0 {
		t.Fatalf("sealed key after adopting another device: %s", r.State)
	}
	s.Close()

	// A normal start on the adopted device finds the missing sealed key
	// through the check index, tries it again and keeps it quarantined.
	s, err = Open(ctx, path, other, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := s.Missing(); !slices.Equal(m, []string{k.ID}) {
		t.Fatalf("missing after a normal start: %v, want %s", m, k.ID)
	}
	if r, _ := s.Get(k.ID); r.State != StateMissing {
		t.Fatalf("sealed key after a normal start on the adopted device: %s", r.State)
	}
	s.Close()

	// The right device again (adopted back): the blob opens, the key is back.
	be.marker = ""
	s, err = Open(ctx, path, be, Options{AdoptDevice: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sg, err := s.Signer(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sg.Sign(nil, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
}

// A missing key whose object comes back while the daemon runs is not the
// sweep's to destroy: only the next start restores it.
func TestSweepLeavesMissingKeys(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, _ := Open(ctx, path, be, Options{})
	k, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	s.Close()
	saved := be.keys[k.ID]
	delete(be.keys, k.ID)
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r, _ := s.Get(k.ID); r.State != StateMissing {
		t.Fatalf("state %s", r.State)
	}
	be.keys[k.ID] = saved // the token is back
	if n, err := s.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("sweep destroyed %d keys (%v)", n, err)
	}
	if _, ok := be.keys[k.ID]; !ok {
		t.Fatal("the sweep destroyed a missing key that came back")
	}
}

// startupFake is a fake device that records when start-up is over.
type startupFake struct {
	*fakeBackend
	done int
}

func (f *startupFake) StartupDone() { f.done++ }

// TestStartupDoneOnEveryOutcome: Open tells a StartupFinisher that
// start-up is over when it serves and when it refuses, so that nothing
// read for start-up is used after it.
func TestStartupDoneOnEveryOutcome(t *testing.T) {
	ctx := context.Background()
	be := &startupFake{fakeBackend: newFake()}
	s, _ := openStore(t, be, Options{})
	if be.done != 1 {
		t.Fatalf("StartupDone called %d times by a successful Open, want 1", be.done)
	}
	s.Close()
	other := filepath.Join(t.TempDir(), "other.db")
	if _, err := Open(ctx, other, be, Options{}); !errors.Is(err, ErrBinding) {
		t.Fatalf("second catalog on the device: %v", err)
	}
	if be.done != 2 {
		t.Fatalf("StartupDone called %d times after a refused Open, want 2", be.done)
	}
}
