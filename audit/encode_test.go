package audit

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// oddStrings need escaping or are otherwise unusual for JSON.
var oddStrings = []string{
	"", "plain", `quote " and backslash \`, "<script>&amp;</script>",
	"nl\nret\rtab\tbs\bff\fnul\x00esc\x1b del\x7f", "é ü 日本 🔑", "\u2028\u2029",
	"bad utf-8 \xff\xfe \xc3", "\xed\xa0\x80 surrogate", "\ufffd", strings.Repeat("x", 300),
}

func randomString(rng *rand.Rand) string {
	if rng.IntN(3) == 0 {
		return oddStrings[rng.IntN(len(oddStrings))]
	}
	b := make([]byte, rng.IntN(40))
	for i := range b {
		if rng.IntN(4) == 0 {
			b[i] = byte(rng.IntN(256)) // any byte, invalid UTF-8 included
		} else {
			b[i] = byte(0x20 + rng.IntN(0x5f))
		}
	}
	return string(b)
}

// The hand-written encoder writes exactly what encoding/json writes: the
// chain hashes these bytes and Verify reads them back with encoding/json.
func TestAppendRecordMatchesJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	times := []time.Time{
		{}, time.Date(2026, 11, 30, 22, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 30, 22, 0, 0, 123456789, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 1000, time.FixedZone("", 5*3600+30*60)),
		time.Date(9999, 12, 31, 23, 59, 59, 100, time.FixedZone("", -8*3600)),
		time.Now(), time.Now().UTC(),
	}
	records := []Record{
		{},
		{Seq: 1, Prev: Genesis, Operation: "SignWithLabel", Outcome: OutcomeOK, Code: "OK"},
		{Seq: math.MaxUint64, UID: math.MaxUint32, GID: math.MaxUint32, PID: math.MinInt32, PrunedSeq: math.MaxUint64},
		{PID: math.MaxInt32, KeyIDs: []string{}},
		{KeyIDs: []string{""}},
		{Operation: OperationPrune, PrunedSeq: 7, PrunedHash: Genesis, Reason: "removed 2 rotated files"},
	}
	for _, s := range oddStrings {
		records = append(records, Record{Exe: s, Operation: s, KeyID: s, KeyIDs: []string{s, s}, Label: s, Outcome: s, Code: s, Reason: s, PrunedHash: s, Prev: s})
	}
	for range 2000 {
		r := Record{
			Seq: rng.Uint64() >> rng.IntN(64), Time: times[rng.IntN(len(times))],
			UID: rng.Uint32(), GID: rng.Uint32() >> rng.IntN(32), PID: int32(rng.Uint32()),
			Exe: randomString(rng), Operation: randomString(rng), KeyID: randomString(rng),
			Label: randomString(rng), Outcome: randomString(rng), Code: randomString(rng),
			Reason: randomString(rng), PrunedHash: randomString(rng), Prev: randomString(rng),
		}
		if rng.IntN(2) == 0 {
			r.PrunedSeq = rng.Uint64()
		}
		for range rng.IntN(4) {
			r.KeyIDs = append(r.KeyIDs, randomString(rng))
		}
		records = append(records, r)
	}
	for _, r := range records {
		want, werr := json.Marshal(r)
		got, gerr := appendRecord([]byte("prefix"), &r)
		if werr != nil || gerr != nil {
			t.Fatalf("%+v: errors %v and %v", r, werr, gerr)
		}
		if !bytes.Equal(got[len("prefix"):], want) {
			t.Fatalf("encoding differs\n got %s\nwant %s", got[len("prefix"):], want)
		}
	}
}

// A time JSON cannot carry fails both encoders, and Append writes nothing.
func TestAppendRecordRefusesWhatJSONRefuses(t *testing.T) {
	r := Record{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	_, werr := json.Marshal(r)
	_, gerr := appendRecord(nil, &r)
	if werr == nil || gerr == nil || !strings.Contains(werr.Error(), gerr.Error()) {
		t.Fatalf("errors %v and %v", werr, gerr)
	}
	l, err := Open(t.TempDir()+"/audit.log", Options{Sync: SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Append(r); err == nil || l.LastSeq() != 0 {
		t.Fatalf("append of an unencodable record: %v, seq %d", err, l.LastSeq())
	}
}

func BenchmarkAppendRecord(b *testing.B) {
	r := Record{Seq: 123456, Time: time.Now().UTC(), UID: 1000, GID: 1000, PID: 4242, Exe: "/usr/bin/mlsclient",
		Operation: "SignWithLabel", KeyID: "0001234567890abcdef0123456789abc", Label: "FramedContentTBS",
		Outcome: OutcomeOK, Code: "OK", Prev: Genesis}
	b.Run("appendRecord", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendRecord(buf[:0], &r)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(r)
		}
	})
}

// TestAppendRecordCarriesEveryField fills every field of a Record, whatever
// fields it has, so that a field added later and forgotten by the
// hand-written encoder fails here rather than breaking the chain.
func TestAppendRecordCarriesEveryField(t *testing.T) {
	var r Record
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch {
		case f.Type() == reflect.TypeOf(time.Time{}):
			f.Set(reflect.ValueOf(time.Date(2026, 11, 30, 23, 0, 0, 1, time.UTC)))
		case f.Kind() == reflect.String:
			f.SetString("x" + v.Type().Field(i).Name)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
			f.Set(reflect.ValueOf([]string{"a", "b"}))
		case f.CanUint():
			f.SetUint(uint64(i + 1))
		case f.CanInt():
			f.SetInt(int64(i + 1))
		default:
			t.Fatalf("field %s of kind %s: teach this test to fill it", v.Type().Field(i).Name, f.Kind())
		}
	}
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := appendRecord(nil, &r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("encoding differs (%v)\n got %s\nwant %s", err, got, want)
	}
}
