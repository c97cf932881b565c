package keystore

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// useInit opens the init key the way a Welcome does: one ECDH with it.
func useInit(ctx context.Context, s *Store, id string) error {
	_, err := s.UseInitKey(ctx, id, func(k any) error {
		peer, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		_, err = k.(ecdh.KeyExchanger).ECDH(peer.PublicKey())
		return err
	})
	return err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRetiredSealedKeyGoneFromOldCatalog: copy the catalog, consume an
// init key, put the copy back: the key must not open again.
func TestRetiredSealedKeyGoneFromOldCatalog(t *testing.T) {
	ctx := context.Background()
	for _, perRetirement := range []bool{true, false} {
		name := "rotation"
		if perRetirement {
			name = "per-retirement"
		}
		t.Run(name, func(t *testing.T) {
			be := newEpochFake(Ed25519) // X25519 is sealed
			path := filepath.Join(t.TempDir(), "catalog.db")
			opts := Options{EpochPerRetirement: perRetirement}
			s, err := Open(ctx, path, be, opts)
			if err != nil {
				t.Fatal(err)
			}
			r, err := s.Create(ctx, KeySpec{Role: RoleInit, Suite: 1, Algorithm: X25519})
			if err != nil {
				t.Fatal(err)
			}
			keep, err := s.Create(ctx, KeySpec{Role: RoleLeafEncryption, Suite: 1, Algorithm: X25519})
			if err != nil {
				t.Fatal(err)
			}
			if r.Protection != ProtectionSealed || r.Epoch == "" || r.Epoch != s.Epoch() {
				t.Fatalf("record: protection %s epoch %q, current %q", r.Protection, r.Epoch, s.Epoch())
			}
			s.Close()
			copyFile(t, path, path+".copy")
			if s, err = Open(ctx, path, be, opts); err != nil {
				t.Fatal(err)
			}
			if err := useInit(ctx, s, r.ID); err != nil {
				t.Fatal(err)
			}
			if !perRetirement {
				if err := s.RotateEpoch(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if n := be.epochCount(); n != 1 {
				t.Fatalf("%d epoch keys on the device, want 1", n)
			}
			// The other key moved to the new epoch and still works.
			if k, err := s.DecryptionKey(ctx, keep.ID); err != nil {
				t.Fatal(err)
			} else if peer, _ := ecdh.X25519().GenerateKey(rand.Reader); true {
				if _, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey()); err != nil {
					t.Fatalf("key of the old epoch after rotation: %v", err)
				}
			}
			s.Close()
			copyFile(t, path+".copy", path)
			if s, err = Open(ctx, path, be, opts); err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			err = useInit(ctx, s, r.ID)
			if !errors.Is(err, ErrEpochDestroyed) {
				t.Fatalf("second open from the old catalog: %v, want ErrEpochDestroyed", err)
			}
			t.Logf("second open: %v", err)
		})
	}
}

// TestEpochPinnedByUncommittedBatch: a rotation between sealing and commit
// must not destroy the epoch the new blob is in.
func TestEpochPinnedByUncommittedBatch(t *testing.T) {
	ctx := context.Background()
	be := newEpochFake(Ed25519)
	var events []string
	s, _ := openStore(t, be, Options{OnEvent: func(ev Event) {
		if ev.Kind == EventEpochStarted || ev.Kind == EventEpochDestroyed {
			events = append(events, string(ev.Kind)+" "+ev.KeyIDs[0])
		}
	}})
	b := s.NewBatch()
	recs, err := b.Generate(ctx, []KeySpec{{Role: RoleInit, Suite: 1, Algorithm: X25519}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RotateEpoch(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := be.epochCount(); n != 2 {
		t.Fatalf("%d epochs, want 2 (the pinned one survives)", n)
	}
	if err := useInit(ctx, s, recs[0].ID); err != nil {
		t.Fatal(err)
	}
	// Its key retired, the old epoch goes at once.
	if n := be.epochCount(); n != 1 {
		t.Fatalf("%d epochs after the last key of the old one retired, want 1", n)
	}
	if len(events) != 3 || events[2] != "epochDestroyed epoch:"+recs[0].Epoch {
		t.Fatalf("epoch events %v, want two NewEpoch and the old one's DestroyEpoch", events)
	}
}

// TestEpochRotatesOnTime: an epoch older than EpochLength is replaced at
// start-up, and keys sealed before epochs existed move into it.
func TestEpochRotatesOnTime(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	// A catalog from before epochs: a device without them.
	legacy := newEpochFake(Ed25519)
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(ctx, path, legacy.fakeBackend, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed448})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if old.Epoch != "" {
		t.Fatalf("epoch %q on a device without epochs", old.Epoch)
	}
	if s, err = Open(ctx, path, legacy, Options{Now: clock, EpochLength: time.Hour}); err != nil {
		t.Fatal(err)
	}
	first := s.Epoch()
	r, _ := s.Get(old.ID)
	if r.Epoch != first {
		t.Fatalf("key from before epochs is in %q, want %q", r.Epoch, first)
	}
	s.Close()
	now = now.Add(2 * time.Hour)
	if s, err = Open(ctx, path, legacy, Options{Now: clock, EpochLength: time.Hour}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Epoch() == first || legacy.epochCount() != 1 {
		t.Fatalf("epoch %q (was %q), %d on the device", s.Epoch(), first, legacy.epochCount())
	}
	sg, err := s.Signer(ctx, old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sg.Sign(rand.Reader, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestEpochBudget: a device without room for a new epoch keeps the current
// one and says so; nothing fails.
func TestEpochBudget(t *testing.T) {
	ctx := context.Background()
	be := newEpochFake(Ed25519)
	be.budget = 1
	s, _ := openStore(t, be, Options{})
	r, err := s.Create(ctx, KeySpec{Role: RoleInit, Suite: 1, Algorithm: X25519})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RotateEpoch(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Epoch() != r.Epoch {
		t.Fatal("epoch changed without a device key")
	}
	if err := useInit(ctx, s, r.ID); err != nil {
		t.Fatal(err)
	}
}

// TestEpochConcurrentRetirements: with a new epoch at every retirement,
// concurrent consumptions (each holding its key's lock while rotating) do
// not deadlock, every key opens exactly once, the survivor still works and
// only the current epoch is left.
func TestEpochConcurrentRetirements(t *testing.T) {
	ctx := context.Background()
	be := newEpochFake(Ed25519)
	s, _ := openStore(t, be, Options{EpochPerRetirement: true})
	var ids []string
	for range 16 {
		r, err := s.Create(ctx, KeySpec{Role: RoleInit, Suite: 1, Algorithm: X25519})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	keep, err := s.Create(ctx, KeySpec{Role: RoleLeafEncryption, Suite: 1, Algorithm: X25519})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2*len(ids))
	var wg sync.WaitGroup
	for _, id := range ids {
		for range 2 {
			wg.Go(func() { errs <- useInit(ctx, s, id) })
		}
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNotActive):
			t.Errorf("UseInitKey: %v", err)
		}
	}
	if ok != len(ids) {
		t.Fatalf("%d successful uses of %d keys", ok, len(ids))
	}
	k, err := s.DecryptionKey(ctx, keep.ID)
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := k.(ecdh.KeyExchanger).ECDH(peer.PublicKey()); err != nil {
		t.Fatalf("surviving key: %v", err)
	}
	if n := be.epochCount(); n != 1 {
		t.Fatalf("%d epochs left, want 1", n)
	}
}

func TestCloseTwice(t *testing.T) {
	s, _ := openStore(t, newEpochFake(), Options{})
	s.Close()
	s.Close()
}

// TestEpochIndexMatchesRecords: the epoch bookkeeping (which epochs hold
// keys, which keys can move) reads idx-epoch instead of every record; it
// must say what a walk over the records says, through creation, rotation,
// retirement and quarantine.
func TestEpochIndexMatchesRecords(t *testing.T) {
	ctx := context.Background()
	be := newEpochFake(Ed25519)
	s, _ := openStore(t, be, Options{EpochLength: time.Hour})
	var keys []*Record
	for i := range 6 {
		if i == 3 {
			if err := s.RotateEpoch(ctx); err != nil {
				t.Fatal(err)
			}
		}
		alg := Ed25519 // hardware: pins its epoch, cannot move
		if i%2 == 1 {
			alg = Ed448 // sealed
		}
		k, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: alg})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if _, _, err := s.Delete(ctx, keys[4].ID, false); err != nil {
		t.Fatal(err)
	}
	if err := s.setState([]string{keys[5].ID}, StateActive, StateMissing); err != nil {
		t.Fatal(err)
	}
	want := map[string][3]int{} // epoch -> active, missing, movable
	err := s.cat.all(func(r *Record) error {
		if (r.Live() || r.State == StateMissing) && (r.Epoch != "" || r.Protection == ProtectionSealed) {
			c := want[r.Epoch]
			if r.Live() {
				c[0]++
			} else {
				c[1]++
			}
			if r.Protection == ProtectionSealed {
				c[2]++
			}
			want[r.Epoch] = c
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	uses, err := s.cat.epochUses(true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][3]int{}
	for _, u := range uses {
		got[u.Epoch] = [3]int{u.Active, u.Missing, len(u.IDs)}
	}
	if !maps.Equal(got, want) {
		t.Errorf("epoch index %v, records say %v", got, want)
	}
	inUse, err := s.cat.epochsInUse()
	if err != nil {
		t.Fatal(err)
	}
	if len(inUse) != len(want) {
		t.Errorf("epochs in use %v, records say %v", inUse, want)
	}
	for _, ep := range inUse {
		if _, ok := want[ep]; !ok {
			t.Errorf("epoch %q in use by the index only", ep)
		}
	}
}
