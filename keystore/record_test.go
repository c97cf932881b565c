package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// normal is r as either stored form gives it back: times in UTC without
// a monotonic reading, empty byte strings nil.
func normal(r *Record) *Record {
	c := *r
	for _, t := range []*time.Time{&c.CreatedAt, &c.NotAfter, &c.RetiredAt} {
		if t.IsZero() {
			*t = time.Time{}
		} else {
			*t = t.Round(0).UTC()
		}
	}
	for _, b := range []*[]byte{&c.PublicKey, &c.DeviceRef, &c.Sealed, &c.KeyPackageRef, &c.Revocation} {
		if len(*b) == 0 {
			*b = nil
		}
	}
	return &c
}

func sampleRecords() []*Record {
	at := time.Date(2026, 11, 30, 22, 30, 1, 123456789, time.FixedZone("x", 3600))
	return []*Record{
		{ID: "a1", Role: RoleSignature, Suite: 1, Algorithm: Ed25519, PublicKey: bytes.Repeat([]byte{7}, 32),
			Protection: ProtectionHardware, DeviceRef: []byte("ref"), Owner: "uid:1", State: StateActive, CreatedAt: at},
		{ID: "a2", Role: RoleInit, Suite: 0xffff, Algorithm: X448, PublicKey: []byte{1}, Protection: ProtectionSealed,
			DeviceRef: []byte("r2"), Sealed: []byte("blob"), Epoch: "e1", Owner: "uid:2", State: StateConsumed, KeyPackageRef: bytes.Repeat([]byte{9}, 32),
			LastResort: true, SignatureKeyID: "a1", NotAfter: at.Add(time.Hour), Identity: "\xff\x00not utf-8",
			CreatedAt: at, RetiredAt: at.Add(time.Minute), RetiredWhy: "Welcome opened", Revocation: []byte{0, 1}},
		// Names this version does not know, far and negative times.
		{ID: "a3", Role: "future-role", Algorithm: "ml-dsa-65", Protection: "enclave", State: "parked",
			NotAfter: time.Unix(1<<40, 0), CreatedAt: time.Unix(-5, 999999999)},
		{ID: "a4"},
	}
}

// TestRecordBinaryRoundTrip: every field comes back from the binary form
// as it went in, identities that are not UTF-8 included (JSON replaced
// their bad bytes), and the binary form is well under the JSON one.
func TestRecordBinaryRoundTrip(t *testing.T) {
	for _, r := range sampleRecords() {
		v := encodeRecord(r)
		if v[0] != recordBinaryV1 {
			t.Fatalf("%s: first byte 0x%02x", r.ID, v[0])
		}
		got, err := decodeRecord([]byte(r.ID), v)
		if err != nil {
			t.Fatal(err)
		}
		if want := normal(r); !reflect.DeepEqual(got, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
	}
	r := sampleRecords()[1]
	j, _ := json.Marshal(r)
	t.Logf("record of %d bytes in JSON, %d in binary", len(j), len(encodeRecord(r)))
	if len(encodeRecord(r)) >= len(j)/2 {
		t.Errorf("binary record of %d bytes, JSON %d", len(encodeRecord(r)), len(j))
	}
}

// TestCorruptRecordNamesIt: a damaged or unknown record is an error that
// names the record and says what is wrong, for every way of reading it.
func TestCorruptRecordNamesIt(t *testing.T) {
	good := encodeRecord(sampleRecords()[1])
	for name, v := range map[string][]byte{
		"empty":          {},
		"truncated":      good[:len(good)-3],
		"trailing bytes": append(bytes.Clone(good), 0),
		"newer format":   {0x02, 0},
		"bad JSON":       []byte(`{"id":`),
		"unknown enum":   {recordBinaryV1, 0, 200},
		"huge length":    append([]byte{recordBinaryV1, 0, 1, 1, 1, 1, 1}, 0xff, 0xff, 0xff, 0xff, 0x0f),
	} {
		_, err := decodeRecord([]byte("k1"), v)
		if err == nil || !strings.Contains(err.Error(), `catalog record "k1" is corrupt`) {
			t.Errorf("%s: %v", name, err)
		}
	}
	s, _ := openStore(t, newFake(), Options{})
	err := s.cat.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKeys).Put([]byte("k1"), good[:10])
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Get("k1")
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), `catalog record "k1" is corrupt: binary record: `) {
		t.Fatalf("Get of a truncated record: %v", err)
	}
	if _, _, err := s.List(Filter{}, "", 10); err == nil || !strings.Contains(err.Error(), `"k1"`) {
		t.Fatalf("List over a truncated record: %v", err)
	}
}

// FuzzDecodeRecord: no input makes the decoder panic, and whatever it
// accepts in the binary form it writes back to the same record.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(encodeRecord(r))
		j, _ := json.Marshal(r)
		f.Add(j)
	}
	f.Add([]byte{recordBinaryV1})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := decodeRecord([]byte("k"), v)
		if err != nil {
			if !strings.Contains(err.Error(), `catalog record "k" is corrupt`) {
				t.Fatalf("error does not name the record: %v", err)
			}
			return
		}
		if len(v) == 0 || v[0] != recordBinaryV1 {
			return
		}
		again, err := decodeRecord([]byte("k"), encodeRecord(r))
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if !reflect.DeepEqual(normal(again), normal(r)) {
			t.Fatalf("re-encoded record differs:\n%+v\n%+v", again, r)
		}
	})
}

// TestJSONCatalogUpgrades: a catalog of schema 1 (JSON records, as older
// versions and their backups hold) opens: it is marked schema 2, every
// record reads as before, a record written again takes the binary form,
// a deletion cascading over JSON records keeps the indexes right, and the
// indexes match a rebuild from the mixed records.
func TestJSONCatalogUpgrades(t *testing.T) {
	ctx := context.Background()
	s, path, be, sig := openWithSigKey(t)
	sig2, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:2"})
	if err != nil {
		t.Fatal(err)
	}
	inits := makeKPs(t, s, sig, "uid:1", 4, false, time.Now().Add(time.Hour), "alice")
	inits = append(inits, makeKPs(t, s, sig, "uid:1", 1, true, time.Now().Add(time.Hour), "alice")...)
	makeKPs(t, s, sig2, "uid:2", 3, false, time.Now().Add(time.Hour), "bob")
	if _, err := s.UseInitKey(ctx, inits[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	before := map[string]*Record{}
	// Turn the catalog into what schema 1 wrote.
	toSchema1(t, s, func(r *Record) { before[r.ID] = normal(r) })
	s.Close()

	s, err = Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	firstByte := func(id string) (c byte) {
		s.cat.db.View(func(tx *bolt.Tx) error { c = tx.Bucket(bucketKeys).Get([]byte(id))[0]; return nil })
		return c
	}
	s.cat.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); !bytes.Equal(v, schemaValue) {
			t.Errorf("schema %q after opening, want %q", v, schemaValue)
		}
		return nil
	})
	for id, want := range before {
		got, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normal(got), want) {
			t.Errorf("%s read from JSON:\n got %+v\nwant %+v", id, got, want)
		}
		if c := firstByte(id); c != '{' {
			t.Errorf("%s rewritten by opening alone (first byte 0x%02x)", id, c)
		}
	}
	if _, err := s.UseInitKey(ctx, inits[1].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if c := firstByte(inits[1].ID); c != recordBinaryV1 {
		t.Errorf("record written after the upgrade starts with 0x%02x", c)
	}
	if reg, lr := unused(t, s, "uid:1"); reg != 2 || lr != 1 {
		t.Fatalf("uid:1 has %d+%d unused KeyPackages, want 2+1", reg, lr)
	}
	if _, _, err := s.Delete(ctx, sig.ID, true); err != nil {
		t.Fatal(err)
	}
	if reg, lr := unused(t, s, "uid:1"); reg != 0 || lr != 0 {
		t.Fatalf("after the cascade uid:1 has %d+%d unused KeyPackages", reg, lr)
	}
	if reg, _ := unused(t, s, "uid:2"); reg != 3 {
		t.Fatalf("uid:2 has %d unused KeyPackages, want 3", reg)
	}
	errRollback := errors.New("rollback")
	err = s.cat.db.Update(func(tx *bolt.Tx) error {
		kept := dumpIndexes(tx)
		if err := tx.Bucket(bucketMeta).Delete(keyIndexVersion); err != nil {
			return err
		}
		if err := ensureIndexes(tx); err != nil {
			return err
		}
		for b, m := range dumpIndexes(tx) {
			if !maps.Equal(kept[b], m) {
				t.Errorf("index %s: kept %d entries, rebuilt %d; they differ", b, len(kept[b]), len(m))
			}
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
}

// TestNewerSchemaRefused: a catalog marked with a schema this version does
// not know is refused at open, saying so, and left as it was.
func TestNewerSchemaRefused(t *testing.T) {
	s, path := openStore(t, newFake(), Options{})
	s.cat.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("3")) })
	s.Close()
	_, err := Open(context.Background(), path, newFake(), Options{})
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), `catalog schema "3" is not supported by this version`) {
		t.Fatalf("open of a schema 3 catalog: %v", err)
	}
}

// TestNonUTF8IdentityKeyPackageIsUsable: a basic credential's identity may
// be any bytes. JSON replaced bytes that are not UTF-8, so the record read
// back named another stock than the one its index entries were made for,
// and using the KeyPackage failed on a count below zero. The binary form
// keeps the bytes.
func TestNonUTF8IdentityKeyPackageIsUsable(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	sig, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:1"})
	if err != nil {
		t.Fatal(err)
	}
	inits := makeKPs(t, s, sig, "uid:1", 2, false, time.Now().Add(time.Hour), "caf\xe9")
	if _, err := s.UseInitKey(ctx, inits[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	cs, err := s.UnusedKeyPackages("uid:1", 1)
	if err != nil || len(cs) != 1 || cs[0].Identity != "caf\xe9" || cs[0].Regular != 1 {
		t.Fatalf("unused KeyPackages after using one: %+v, %v", cs, err)
	}
	if r, err := s.Get(inits[1].ID); err != nil || r.Identity != "caf\xe9" {
		t.Fatalf("identity read back: %q, %v", r.Identity, err)
	}
}

// BenchmarkDecodeRecord compares reading a signature key's record in
// either form: what Store.Get decodes per request.
func BenchmarkDecodeRecord(b *testing.B) {
	r := sampleRecords()[0]
	j, _ := json.Marshal(r)
	for _, c := range []struct {
		name string
		v    []byte
	}{{"json", j}, {"binary", encodeRecord(r)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeRecord([]byte(r.ID), c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRecordSampleSetsEveryField keeps the round trip honest when Record
// grows: a field the binary form does not carry would come back zero, so
// the full sample must set every field.
func TestRecordSampleSetsEveryField(t *testing.T) {
	full := reflect.ValueOf(sampleRecords()[1]).Elem()
	for i := range full.NumField() {
		if f := full.Type().Field(i); f.IsExported() && full.Field(i).IsZero() {
			t.Errorf("sample record a2 leaves %s zero: set it, and carry it in the binary form", f.Name)
		}
	}
}

// TestPreUpgradeNonUTF8KeyPackagesUsable: a catalog of schema 1 (JSON
// records) kept a KeyPackage identity that is not UTF-8 with its bytes
// replaced, while its index entries kept the original bytes, so using such
// a KeyPackage drove a count below zero and failed. The upgrade rebuilds
// the indexes from the records (index version 6), which makes the two
// agree: the KeyPackages open again, under the identity JSON left them.
func TestPreUpgradeNonUTF8KeyPackagesUsable(t *testing.T) {
	ctx := context.Background()
	s, path, be, sig := openWithSigKey(t)
	inits := makeKPs(t, s, sig, "uid:1", 2, false, time.Now().Add(time.Hour), "caf\xe9")
	// What the last schema-1 daemon left: JSON records, index version 5
	// and the index entries as that daemon made them (from the raw bytes).
	toSchema1(t, s, nil)
	s.Close()
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.UseInitKey(ctx, inits[0].ID, func(any) error { return nil }); err != nil {
		t.Fatalf("using a pre-upgrade KeyPackage with a non-UTF-8 identity: %v", err)
	}
	cs, err := s.UnusedKeyPackages("uid:1", 1)
	if err != nil || len(cs) != 1 || cs[0].Identity != "caf\uFFFD" || cs[0].Regular != 1 {
		t.Fatalf("unused KeyPackages after using one: %+v, %v", cs, err)
	}
	// Only the buckets that changed from version 5 were rebuilt; all of
	// them equal a full rebuild.
	checkIndexesMatchARebuild(t, s)
}

// toSchema1 turns s's catalog into what the last schema-1 daemon wrote:
// JSON records (each passed to seen first, if set) and index version 5,
// with the index entries as they are.
func toSchema1(t *testing.T, s *Store, seen func(*Record)) {
	t.Helper()
	err := s.cat.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		err := b.ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			if seen != nil {
				seen(r)
			}
			j, err := json.Marshal(r)
			if err != nil {
				return err
			}
			return b.Put(k, j)
		})
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketMeta).Put(keyIndexVersion, []byte("5")); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchema, schemaJSON)
	})
	if err != nil {
		t.Fatal(err)
	}
}
