package keystore

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// noListBackend is the fake without Lister: the catalog's device refs are
// synthetic, so start-up must not reconcile them against a device.
type noListBackend struct{ Backend }

// putRecords writes records in one transaction, straight into the
// catalog (no device, no journal).
func putRecords(s *Store, rs []*Record) error {
	return s.cat.db.Update(func(tx *bolt.Tx) error {
		for _, r := range rs {
			if err := putRecord(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// fillCatalog writes n records straight into the catalog, in transactions
// of 10,000: a signature key per owner and KeyPackages (init and leaf key)
// for the rest, spread over 100 owners. Device refs are synthetic.
func fillCatalog(tb testing.TB, s *Store, n int) (sigs []*Record, inits []*Record) {
	tb.Helper()
	const owners = 100
	now := time.Now().UTC()
	pub := make([]byte, 32)
	for o := range owners {
		sigs = append(sigs, &Record{ID: s.newID(), Role: RoleSignature, Suite: 1, Algorithm: Ed25519, PublicKey: pub,
			Protection: ProtectionHardware, DeviceRef: []byte("sig"), Owner: fmt.Sprintf("uid:%d", o), State: StateActive, CreatedAt: now})
	}
	if err := putRecords(s, sigs); err != nil {
		tb.Fatal(err)
	}
	var batch []*Record
	for i := 0; len(sigs)+i*2 < n; i++ {
		sig := sigs[i%owners]
		ref := make([]byte, 32)
		rand.Read(ref)
		in := &Record{ID: s.newID(), Role: RoleInit, Suite: 1, Algorithm: X25519, PublicKey: pub, Protection: ProtectionHardware,
			DeviceRef: []byte("init"), Owner: sig.Owner, State: StateActive, KeyPackageRef: ref, SignatureKeyID: sig.ID,
			NotAfter: now.Add(time.Duration(i%1000) * time.Hour), CreatedAt: now}
		leaf := *in
		leaf.ID, leaf.Role, leaf.DeviceRef = s.newID(), RoleLeafEncryption, []byte("leaf")
		batch = append(batch, in, &leaf)
		if i%1000 == 0 {
			inits = append(inits, in)
		}
		if len(batch) >= 10000 {
			if err := putRecords(s, batch); err != nil {
				tb.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := putRecords(s, batch); err != nil {
		tb.Fatal(err)
	}
	return sigs, inits
}

// TestCatalogScale fills a catalog with MLSKEYD_SCALE_KEYS keys (10,000
// if unset) and logs what start-up, look-ups, counts, listings and a
// deletion cost, and the heap after start-up. It asserts results, never
// times: the figures are for docs/performance.md.
func TestCatalogScale(t *testing.T) {
	n := 10000
	if v := os.Getenv("MLSKEYD_SCALE_KEYS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			t.Fatalf("MLSKEYD_SCALE_KEYS=%q: want a number of at least 1000", v)
		}
	}
	ctx := context.Background()
	be := noListBackend{newFake(Ed25519, X25519)}
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sigs, inits := fillCatalog(t, s, n)
	t.Logf("%d keys written in %v", n, time.Since(start).Round(time.Millisecond))
	s.Close()
	fi, _ := os.Stat(path)

	// The process's resident set at start-up, as near as one test process
	// can show it: the filling's heap handed back to the system and the
	// peak (VmHWM) reset before Open.
	debug.FreeOSMemory()
	hwmReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	rss0, _ := procStatus("VmRSS")
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start = time.Now()
	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }() // the s of the end: it is reopened below
	opened := time.Since(start)
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	t.Logf("start-up (open, reconcile, check every hardware key) %v, %d MiB allocated; catalog file %d MiB (mapped, not heap); heap in use after start-up %d MiB, %d objects",
		opened.Round(time.Millisecond), (m1.TotalAlloc-m0.TotalAlloc)>>20, fi.Size()>>20, m1.HeapInuse>>20, m1.HeapObjects)
	t.Logf("catalog %d bytes per key", fi.Size()/int64(n))
	rss1, _ := procStatus("VmRSS")
	hwm, _ := procStatus("VmHWM")
	anon, _ := procStatus("RssAnon")
	file, _ := procStatus("RssFile")
	if !hwmReset {
		t.Logf("(could not reset VmHWM: the peak below includes the filling)")
	}
	t.Logf("RSS before Open %d MiB, after start-up %d MiB (anonymous %d MiB, file: the catalog's mapped pages and the binary's, %d MiB), peak during start-up (VmHWM) %d MiB",
		rss0>>10, rss1>>10, anon>>10, file>>10, hwm>>10)

	const rounds = 1000
	timed := func(what string, fn func(i int)) {
		start := time.Now()
		for i := range rounds {
			fn(i)
		}
		t.Logf("%-52s %8.1f µs", what, float64(time.Since(start).Microseconds())/rounds)
	}
	timed("Get (one catalog read)", func(i int) {
		if _, err := s.Get(inits[i%len(inits)].ID); err != nil {
			t.Fatal(err)
		}
	})
	timed("ByKeyPackageRef", func(i int) {
		if _, err := s.ByKeyPackageRef(inits[i%len(inits)].KeyPackageRef); err != nil {
			t.Fatal(err)
		}
	})
	perOwner := 0
	timed("UnusedKeyPackages (one owner)", func(i int) {
		cs, err := s.UnusedKeyPackages(sigs[i%len(sigs)].Owner, 0)
		if err != nil || len(cs) != 1 {
			t.Fatalf("%+v, %v", cs, err)
		}
		perOwner = cs[0].Regular
	})
	if want := (n - len(sigs)) / 2 / len(sigs); perOwner < want-1 || perOwner > want+1 {
		t.Fatalf("an owner has %d unused KeyPackages, want about %d", perOwner, want)
	}
	timed("List, one owner, page of 20", func(i int) {
		recs, _, err := s.List(Filter{Owner: sigs[i%len(sigs)].Owner}, "", 20)
		if err != nil || len(recs) != 20 {
			t.Fatalf("%d records, %v", len(recs), err)
		}
	})
	timed("List, all owners, page of 100", func(i int) {
		if recs, _, err := s.List(Filter{}, "", 100); err != nil || len(recs) != 100 {
			t.Fatalf("%d records, %v", len(recs), err)
		}
	})
	start = time.Now()
	sig := sigs[0]
	_, cascaded, err := s.Delete(ctx, sig.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Delete of a signature key with cascade over its %d KeyPackages: %v", len(cascaded)/2, time.Since(start).Round(time.Millisecond))
	if cs, _ := s.UnusedKeyPackages(sig.Owner, 0); len(cs) != 0 {
		t.Fatalf("after the cascade: %+v", cs)
	}
	// Where the file's bytes go: each bucket's pages per key.
	s.cat.db.View(func(tx *bolt.Tx) error {
		var parts []string
		for _, b := range append([][]byte{bucketKeys, bucketRefs}, indexBuckets...) {
			st := tx.Bucket(b).Stats()
			parts = append(parts, fmt.Sprintf("%s %d", b, int64(st.BranchAlloc+st.LeafAlloc)/int64(n)))
		}
		t.Logf("bytes per key in pages, by bucket: %s", strings.Join(parts, ", "))
		return nil
	})
	// The first start after an upgrade that changes the index version
	// rebuilds indexes from the records: from version 5 only those that
	// changed, from anything older all of them.
	for _, from := range []string{"5", "0"} {
		s.Close()
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyIndexVersion, []byte(from)) })
		db.Close()
		runtime.GC()
		runtime.ReadMemStats(&m0)
		start = time.Now()
		if s, err = Open(ctx, path, be, Options{}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		runtime.ReadMemStats(&m1)
		t.Logf("start-up that rebuilds the indexes from version %s: %v, %d MiB allocated", from, took.Round(time.Millisecond), (m1.TotalAlloc-m0.TotalAlloc)>>20)
	}
}

// procStatus returns a kB field of /proc/self/status (VmRSS, VmHWM).
func procStatus(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}

// BenchmarkCatalog measures the per-request catalog reads on a catalog of
// 100,000 keys: a record by id, an init key by KeyPackageRef, the unused
// count of an owner.
func BenchmarkCatalog(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "catalog.db"), noListBackend{newFake(Ed25519, X25519)}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	sigs, inits := fillCatalog(b, s, 100000)
	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.Get(inits[i%len(inits)].ID); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("ByKeyPackageRef", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.ByKeyPackageRef(inits[i%len(inits)].KeyPackageRef); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("UnusedKeyPackages", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.UnusedKeyPackages(sigs[i%len(sigs)].Owner, 0); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
