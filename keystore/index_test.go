package keystore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// makeKPs commits n KeyPackages' init and leaf keys for owner, signed by
// sig, the way the server does, and returns the init keys.
func makeKPs(t testing.TB, s *Store, sig *Record, owner string, n int, lastResort bool, notAfter time.Time, identity ...string) []*Record {
	t.Helper()
	ctx := context.Background()
	b := s.NewBatch()
	defer b.Abort(ctx)
	var specs []KeySpec
	for range n {
		specs = append(specs,
			KeySpec{Role: RoleInit, Suite: sig.Suite, Algorithm: X25519, Owner: owner},
			KeySpec{Role: RoleLeafEncryption, Suite: sig.Suite, Algorithm: X25519, Owner: owner})
	}
	recs, err := b.Generate(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	var inits []*Record
	for i := 0; i < len(recs); i += 2 {
		ref := make([]byte, 32)
		rand.Read(ref)
		for _, r := range recs[i : i+2] {
			r.KeyPackageRef, r.SignatureKeyID, r.NotAfter = ref, sig.ID, notAfter
			if len(identity) > 0 {
				r.Identity = identity[0]
			}
		}
		recs[i].LastResort = lastResort
		inits = append(inits, recs[i])
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	return inits
}

func unused(t *testing.T, s *Store, owner string) (regular, lastResort int) {
	t.Helper()
	cs, err := s.UnusedKeyPackages(owner, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		regular += c.Regular
		lastResort += c.LastResort
	}
	return regular, lastResort
}

// TestUnusedCountersFollowLifecycle: the per-owner counters of unused
// KeyPackages move with creation, consumption and deletion, and agree
// with a count over every record.
func TestUnusedCountersFollowLifecycle(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	later := time.Now().Add(time.Hour)
	sig, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:1"})
	if err != nil {
		t.Fatal(err)
	}
	inits := makeKPs(t, s, sig, "uid:1", 3, false, later)
	lr := makeKPs(t, s, sig, "uid:1", 1, true, later)
	sig2, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:2"})
	makeKPs(t, s, sig2, "uid:2", 2, false, later)

	check := func(step string, owner string, wantReg, wantLR int) {
		t.Helper()
		reg, lrN := unused(t, s, owner)
		scan, err := s.Count(Filter{Role: RoleInit, State: StateActive, Owner: owner}, func(r *Record) bool { return !r.LastResort })
		if err != nil {
			t.Fatal(err)
		}
		if reg != wantReg || lrN != wantLR || scan != wantReg {
			t.Fatalf("%s: %s has %d unused and %d last-resort KeyPackages (scan: %d), want %d and %d", step, owner, reg, lrN, scan, wantReg, wantLR)
		}
	}
	check("created", "uid:1", 3, 1)
	check("created", "uid:2", 2, 0)

	if _, err := s.UseInitKey(ctx, inits[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	check("one consumed", "uid:1", 2, 1)
	if _, err := s.UseInitKey(ctx, lr[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	check("last resort used", "uid:1", 2, 1)

	if _, _, err := s.Delete(ctx, inits[1].ID, true); err != nil {
		t.Fatal(err)
	}
	check("one deleted", "uid:1", 1, 1)

	_, cascaded, err := s.Delete(ctx, sig.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	// the remaining regular and last-resort KeyPackage: init and leaf each
	if len(cascaded) != 4 {
		t.Fatalf("cascade retired %d keys, want 4", len(cascaded))
	}
	check("signature key deleted", "uid:1", 0, 0)
	check("other owner untouched", "uid:2", 2, 0)
	all, err := s.AllUnusedKeyPackages(0)
	if err != nil || len(all) != 1 || all[0].Owner != "uid:2" || all[0].Suite != 1 {
		t.Fatalf("AllUnusedKeyPackages = %+v, %v", all, err)
	}
}

// TestIndexesBuiltForOldCatalog: a catalog written before the indexes
// existed gets them, complete, when opened.
func TestIndexesBuiltForOldCatalog(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, path := openStore(t, be, Options{})
	sig, _ := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:7"})
	makeKPs(t, s, sig, "uid:7", 5, false, time.Now().Add(time.Hour))
	// What an older version left: no index buckets, no index version.
	err := s.cat.db.Update(func(tx *bolt.Tx) error {
		for _, b := range indexBuckets {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Delete(keyIndexVersion)
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if reg, _ := unused(t, s2, "uid:7"); reg != 5 {
		t.Fatalf("after rebuilding: %d unused KeyPackages, want 5", reg)
	}
	recs, _, err := s2.List(Filter{Owner: "uid:7"}, "", 100)
	if err != nil || len(recs) != 11 {
		t.Fatalf("List by owner after rebuilding: %d records, %v; want 11", len(recs), err)
	}
	// Deletion finds the KeyPackages through the rebuilt index.
	if _, _, err := s2.Delete(ctx, sig.ID, false); err == nil {
		t.Fatal("deleting a signature key with unused KeyPackages succeeded without cascade")
	}
}

// TestListByOwnerPages: a listing for one owner pages through that
// owner's keys only, in id order, among other owners' keys.
func TestListByOwnerPages(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	var want []string
	for i := range 25 {
		owner := fmt.Sprintf("uid:%d", i%3)
		r, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: owner})
		if err != nil {
			t.Fatal(err)
		}
		if owner == "uid:1" {
			want = append(want, r.ID)
		}
	}
	slices.Sort(want)
	var got []string
	after := ""
	for {
		recs, next, err := s.List(Filter{Owner: "uid:1"}, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			got = append(got, r.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged listing of uid:1: %v, want %v", got, want)
	}
}

// dumpIndexes returns every index entry, by bucket.
func dumpIndexes(tx *bolt.Tx) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, b := range indexBuckets {
		m := map[string]string{}
		tx.Bucket(b).ForEach(func(k, v []byte) error { m[string(k)] = string(v); return nil })
		out[string(b)] = m
	}
	return out
}

// TestIndexesMatchARebuild: after a mix of creations, consumptions,
// deletions with and without cascade and expiries, the incrementally kept
// indexes equal indexes rebuilt from the records.
func TestIndexesMatchARebuild(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); clock = clock.Add(time.Millisecond); return clock }
	s, _ := openStore(t, newFake(), Options{Now: now})
	var sigs []*Record
	for o := range 3 {
		sig, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: fmt.Sprintf("uid:%d", o)})
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, sig)
	}
	var inits []*Record
	for i := range 12 {
		sig := sigs[i%3]
		id := []string{"alice", "bob", "x\x00y"}[i%3]
		inits = append(inits, makeKPs(t, s, sig, sig.Owner, 3, i%4 == 0, now().Add(time.Duration(i%3)*time.Hour), id)...)
	}
	for i, r := range inits {
		switch i % 5 {
		case 0:
			if _, err := s.UseInitKey(ctx, r.ID, func(any) error { return nil }); err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, _, err := s.Delete(ctx, r.ID, i%2 == 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	mu.Lock()
	clock = clock.Add(90 * time.Minute)
	mu.Unlock()
	if _, err := s.ExpireKeyPackages(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Delete(ctx, sigs[1].ID, true); err != nil {
		t.Fatal(err)
	}
	// A quarantined key is in the start-up check index (idxCheck).
	if err := s.setState([]string{sigs[2].ID}, StateActive, StateMissing); err != nil {
		t.Fatal(err)
	}
	checkIndexesMatchARebuild(t, s)
}

// checkIndexesMatchARebuild compares s's indexes with indexes rebuilt from
// its records, in a transaction it rolls back.
func checkIndexesMatchARebuild(t *testing.T, s *Store) {
	t.Helper()
	errRollback := errors.New("rollback")
	err := s.cat.db.Update(func(tx *bolt.Tx) error {
		kept := dumpIndexes(tx)
		if err := tx.Bucket(bucketMeta).Delete(keyIndexVersion); err != nil {
			return err
		}
		if err := ensureIndexes(tx); err != nil {
			return err
		}
		rebuilt := dumpIndexes(tx)
		for b := range rebuilt {
			if !maps.Equal(kept[b], rebuilt[b]) {
				t.Errorf("index %s: kept %d entries, rebuilt %d; they differ", b, len(kept[b]), len(rebuilt[b]))
			}
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
}

// TestStartupReadsTheCheckIndexOnly: start-up's hardware check works from
// idxCheck alone, so a catalog of many retired or sealed keys costs it
// nothing per record: the index holds the active hardware key with what
// the check needs, and not the retired one.
func TestStartupReadsTheCheckIndexOnly(t *testing.T) {
	ctx := context.Background()
	be := newFake(Ed25519)
	s, path := openStore(t, be, Options{})
	live, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Delete(ctx, gone.ID, false); err != nil {
		t.Fatal(err)
	}
	var checked []string
	n := 0
	err = s.cat.checkedAtStartRecords(func(r checkEntry) error {
		n++
		checked = append(checked, r.ID)
		if r.State != StateActive || r.Protection != ProtectionHardware || r.Algorithm != Ed25519 || !bytes.Equal(r.DeviceRef, live.DeviceRef) {
			t.Errorf("index entry %+v does not match the record %+v", r, live)
		}
		return nil
	})
	if err != nil || n != 1 || checked[0] != live.ID {
		t.Fatalf("start-up would check %v (%v), want only %s", checked, err, live.ID)
	}
	s.Close()
	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	s.Close()
}

// TestIndexUpgradeRebuildsOnlyWhatChanged: from index version 5 the
// upgrade rebuilds only the buckets that changed (partialRebuilds) and
// leaves the others as they are; a version-5 catalog that lacks one of
// the others gets every index rebuilt.
func TestIndexUpgradeRebuildsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	be := newFake()
	s, path := openStore(t, be, Options{})
	if _, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:1"}); err != nil {
		t.Fatal(err)
	}
	marker := []byte("marker\x00kept")
	for _, lose := range []string{"", string(idxOwner)} {
		err := s.cat.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(idxOwner).Put(marker, nil); err != nil {
				return err
			}
			for _, b := range []string{string(idxRevoke), lose} {
				if b != "" {
					if err := tx.DeleteBucket([]byte(b)); err != nil {
						return err
					}
				}
			}
			return tx.Bucket(bucketMeta).Put(keyIndexVersion, []byte("5"))
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		var err2 error
		if s, err2 = Open(ctx, path, be, Options{}); err2 != nil {
			t.Fatalf("open after losing %q: %v", lose, err2)
		}
		s.cat.db.View(func(tx *bolt.Tx) error {
			kept := tx.Bucket(idxOwner).Get(marker) != nil
			if kept != (lose == "") {
				t.Errorf("losing %q: idx-owner's extra entry kept: %v", lose, kept)
			}
			if v := tx.Bucket(bucketMeta).Get(keyIndexVersion); !bytes.Equal(v, indexVersion) {
				t.Errorf("index version %q after the upgrade", v)
			}
			return nil
		})
		if lose != "" {
			checkIndexesMatchARebuild(t, s)
		}
	}
	s.Close()
}

// TestIndexRebuildInChunks: Open rebuilds indexes rebuildChunk records per
// transaction, and a rebuild cut short after its first transaction (a
// crash) is started over and completed by the next open.
func TestIndexRebuildInChunks(t *testing.T) {
	defer func(n int) { rebuildChunk = n }(rebuildChunk)
	rebuildChunk = 7
	ctx := context.Background()
	s, path, be, sig := openWithSigKey(t)
	makeKPs(t, s, sig, "uid:1", 20, false, time.Now().Add(time.Hour), "alice")
	makeKPs(t, s, sig, "uid:1", 2, true, time.Now().Add(time.Hour), "alice")
	for _, cut := range []bool{false, true} {
		err := s.cat.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketMeta).Put(keyIndexVersion, []byte("0")); err != nil {
				return err
			}
			if !cut {
				return nil
			}
			only, err := prepareIndexes(tx)
			if err != nil {
				return err
			}
			_, done, err := indexRecords(tx, only, nil, rebuildChunk)
			if done {
				t.Fatal("one chunk indexed every record")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if s, err = Open(ctx, path, be, Options{}); err != nil {
			t.Fatalf("open (cut short before: %v): %v", cut, err)
		}
		checkIndexesMatchARebuild(t, s)
		if cs, err := s.UnusedKeyPackages("uid:1", 1); err != nil || len(cs) != 1 || cs[0].Regular != 20 || cs[0].LastResort != 2 {
			t.Fatalf("cut short before: %v: unused KeyPackages %+v, %v", cut, cs, err)
		}
	}
	s.Close()
}

// openWithSigKey opens a store on a fake device with one signature key
// (suite 1, owner uid:1).
func openWithSigKey(t *testing.T) (*Store, string, *fakeBackend, *Record) {
	t.Helper()
	be := newFake()
	s, path := openStore(t, be, Options{})
	sig, err := s.Create(context.Background(), KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:1"})
	if err != nil {
		t.Fatal(err)
	}
	return s, path, be, sig
}

// ensureIndexes brings the indexes up to date in the one transaction tx,
// as Open's prepareIndexes and rebuildIndexes do in several.
func ensureIndexes(tx *bolt.Tx) error {
	only, err := prepareIndexes(tx)
	if only == nil {
		return err
	}
	_, _, err = indexRecords(tx, only, nil, math.MaxInt)
	return err
}
