package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var ops = []string{"CreateSignatureKey", "SignWithLabel", "OpenWelcome", "DecryptWithLabel", "DeleteKey", "CreateKeyPackages", "AttestKey"}

func rec(i int) Record {
	r := Record{
		UID: 1000, GID: 1000, PID: int32(4000 + i), Exe: "/usr/bin/client",
		Operation: ops[i%len(ops)], KeyID: fmt.Sprintf("key-%03d", i),
		Outcome: OutcomeOK, Code: "OK",
	}
	switch i % 5 {
	case 1:
		r.Label = "MLS 1.0 LeafNodeTBS"
	case 2:
		r.KeyID, r.KeyIDs = "", []string{"a", "b"}
	case 3:
		r.Outcome, r.Code, r.Reason = OutcomeDenied, "PermissionDenied", "policy: uid not allowed"
	}
	return r
}

func mustOpen(t *testing.T, path string, opts Options) *Log {
	t.Helper()
	l, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// buildLog writes 100 records with one manual and at least two automatic
// rotations and returns the live path and its files.
func buildLog(t *testing.T) (string, []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 10000})
	for i := range 100 {
		if i == 20 {
			if err := l.Rotate(); err != nil {
				t.Fatalf("Rotate: %v", err)
			}
		}
		if err := l.Append(rec(i)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	last := l.LastHash()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("got %d files, want >= 4 (3 rotations): %v", len(files), files)
	}
	rep, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 100 || rep.FirstSeq != 1 || rep.LastSeq != 100 || rep.LastHash != last || len(rep.Files) != len(files) {
		t.Fatalf("report %+v, want 100 records 1..100 hash %s", rep, last)
	}
	return path, files
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func writeLines(t *testing.T, path string, lines []string) {
	t.Helper()
	s := strings.Join(lines, "\n")
	if len(lines) > 0 {
		s += "\n"
	}
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

type loc struct {
	file string
	idx  int // 0-based line index
}

// locate returns where the record with the given seq is.
func locate(t *testing.T, files []string, seq uint64) loc {
	t.Helper()
	for _, f := range files {
		for i, line := range readLines(t, f) {
			var r Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatal(err)
			}
			if r.Seq == seq {
				return loc{f, i}
			}
		}
	}
	t.Fatalf("seq %d not found", seq)
	return loc{}
}

// locatePair returns a seq s in [from, ...) such that s and s+1 are in the
// same file and s+1 is not the last line of it.
func locatePair(t *testing.T, files []string, from uint64) (uint64, loc) {
	t.Helper()
	for s := from; s < 98; s++ {
		a, b := locate(t, files, s), locate(t, files, s+2)
		if a.file == b.file {
			return s, a
		}
	}
	t.Fatal("no pair found")
	return 0, loc{}
}

func wantChainErr(t *testing.T, err error, kind, file string, line int) *ChainError {
	t.Helper()
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("got error %v (%T), want *ChainError", err, err)
	}
	if ce.Kind != kind || ce.File != file || ce.Line != line {
		t.Fatalf("got %s %s:%d (%v), want %s %s:%d", ce.Kind, ce.File, ce.Line, ce, kind, file, line)
	}
	msg := ce.Error()
	if !strings.Contains(msg, kind) || !strings.Contains(msg, fmt.Sprintf("%s:%d", file, line)) {
		t.Fatalf("message %q does not name kind, file and line", msg)
	}
	return ce
}

func TestAppendRotateVerify(t *testing.T) {
	path, files := buildLog(t)
	if files[len(files)-1] != path {
		t.Fatalf("live file not last: %v", files)
	}
	if !slices.IsSorted(files[:len(files)-1]) {
		t.Fatalf("rotated files not sorted: %v", files)
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	// The first record is the genesis record; every file boundary links.
	first := readLines(t, files[0])[0]
	var r Record
	if err := json.Unmarshal([]byte(first), &r); err != nil || r.Seq != 1 || r.Prev != Genesis {
		t.Fatalf("first record %s (%v)", first, err)
	}
	for i := 1; i < len(files); i++ {
		prev := readLines(t, files[i-1])
		cur := readLines(t, files[i])
		if len(cur) == 0 {
			continue
		}
		if err := json.Unmarshal([]byte(cur[0]), &r); err != nil {
			t.Fatal(err)
		}
		if r.Prev != hashLine([]byte(prev[len(prev)-1])) {
			t.Fatalf("file %s does not link to %s", files[i], files[i-1])
		}
	}
}

func TestRecordJSON(t *testing.T) {
	b, err := json.Marshal(Record{Seq: 1, KeyIDs: []string{"x"}, Prev: Genesis})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"seq"`, `"time"`, `"uid"`, `"gid"`, `"pid"`, `"exe"`, `"operation"`, `"key_id"`, `"key_ids"`, `"outcome"`, `"code"`, `"prev"`} {
		if !strings.Contains(string(b), k+":") {
			t.Errorf("%s missing in %s", k, b)
		}
	}
	b, _ = json.Marshal(Record{})
	for _, k := range []string{`"key_ids"`, `"label"`, `"reason"`} {
		if strings.Contains(string(b), k) {
			t.Errorf("%s not omitted in %s", k, b)
		}
	}
}

func TestDetectEdited(t *testing.T) {
	_, files := buildLog(t)
	at := locate(t, files, 50)
	lines := readLines(t, at.file)
	orig := slices.Clone(lines)
	var r Record
	if err := json.Unmarshal([]byte(lines[at.idx]), &r); err != nil {
		t.Fatal(err)
	}
	r.UID = 0 // pretend root did it
	b, _ := json.Marshal(r)
	lines[at.idx] = string(b)
	writeLines(t, at.file, lines)
	_, err := Verify(files...)
	ce := wantChainErr(t, err, KindEdited, at.file, at.idx+1)
	if ce.Seq != 50 {
		t.Errorf("seq %d, want 50", ce.Seq)
	}

	// Editing the prev field of a record names that record.
	lines = slices.Clone(orig)
	lines[at.idx] = lines[at.idx][:strings.LastIndex(lines[at.idx], `"prev":"`)+8] + strings.Repeat("a", 64) + `"}`
	writeLines(t, at.file, lines)
	_, err = Verify(files...)
	wantChainErr(t, err, KindEdited, at.file, at.idx+1)

	// Editing the seq field of a record names that record.
	lines = slices.Clone(orig)
	lines[at.idx] = strings.Replace(lines[at.idx], `"seq":50,`, `"seq":57,`, 1)
	writeLines(t, at.file, lines)
	_, err = Verify(files...)
	wantChainErr(t, err, KindEdited, at.file, at.idx+1)

	// Editing the very first record.
	writeLines(t, at.file, orig)
	first := readLines(t, files[0])
	first[0] = strings.Replace(first[0], `"uid":1000`, `"uid":1001`, 1)
	writeLines(t, files[0], first)
	_, err = Verify(files...)
	wantChainErr(t, err, KindEdited, files[0], 1)
}

func TestDetectRemoved(t *testing.T) {
	_, files := buildLog(t)
	s, at := locatePair(t, files, 50)
	lines := readLines(t, at.file)
	lines = slices.Delete(lines, at.idx, at.idx+1)
	writeLines(t, at.file, lines)
	_, err := Verify(files...)
	ce := wantChainErr(t, err, KindRemoved, at.file, at.idx+1)
	if ce.Seq != s+1 {
		t.Errorf("seq %d, want %d", ce.Seq, s+1)
	}
}

func TestDetectInserted(t *testing.T) {
	_, files := buildLog(t)
	src := locate(t, files, 10)
	copied := readLines(t, src.file)[src.idx]
	_, at := locatePair(t, files, 50)
	lines := readLines(t, at.file)
	orig := slices.Clone(lines)
	lines = slices.Insert(lines, at.idx+1, copied)
	writeLines(t, at.file, lines)
	_, err := Verify(files...)
	ce := wantChainErr(t, err, KindInserted, at.file, at.idx+2)
	if ce.Seq != 10 {
		t.Errorf("seq %d, want 10", ce.Seq)
	}

	// A duplicate right after the original.
	lines = slices.Insert(slices.Clone(orig), at.idx+1, orig[at.idx])
	writeLines(t, at.file, lines)
	_, err = Verify(files...)
	wantChainErr(t, err, KindInserted, at.file, at.idx+2)

	// A copy of a later record inserted earlier.
	later := locate(t, files, 95)
	copied = readLines(t, later.file)[later.idx]
	lines = slices.Insert(slices.Clone(orig), at.idx+1, copied)
	writeLines(t, at.file, lines)
	_, err = Verify(files...)
	wantChainErr(t, err, KindInserted, at.file, at.idx+2)
}

func TestDetectReordered(t *testing.T) {
	_, files := buildLog(t)
	_, at := locatePair(t, files, 50)
	lines := readLines(t, at.file)
	orig := slices.Clone(lines)
	lines[at.idx], lines[at.idx+1] = lines[at.idx+1], lines[at.idx]
	writeLines(t, at.file, lines)
	_, err := Verify(files...)
	wantChainErr(t, err, KindReordered, at.file, at.idx+1)

	// Moving a record two places down.
	lines = slices.Clone(orig)
	lines[at.idx], lines[at.idx+1], lines[at.idx+2] = lines[at.idx+1], lines[at.idx+2], lines[at.idx]
	writeLines(t, at.file, lines)
	_, err = Verify(files...)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Kind != KindReordered {
		t.Fatalf("got %v, want reordered", err)
	}
}

func TestDetectMissingFile(t *testing.T) {
	_, files := buildLog(t)
	// Dropping a middle rotated file: error at the boundary.
	_, err := Verify(slices.Delete(slices.Clone(files), 1, 2)...)
	ce := wantChainErr(t, err, KindRemoved, files[2], 1)
	if !strings.Contains(ce.Problem, files[0]) {
		t.Errorf("problem %q does not name the previous file", ce.Problem)
	}
	// Same, by deleting it from disk and listing again.
	if err := os.Remove(files[1]); err != nil {
		t.Fatal(err)
	}
	files2, err := Files(files[len(files)-1])
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(files2...)
	wantChainErr(t, err, KindRemoved, files[2], 1)

	// Dropping the oldest file: not genesis, unless allowed.
	_, err = Verify(files[2:]...)
	wantChainErr(t, err, KindStart, files[2], 1)
	rep, err := VerifyWith(VerifyOptions{AllowNonGenesisStart: true}, files[2:]...)
	if err != nil {
		t.Fatalf("VerifyWith: %v", err)
	}
	if rep.LastSeq != 100 || rep.FirstSeq <= 1 {
		t.Fatalf("report %+v", rep)
	}
}

func TestDetectMalformed(t *testing.T) {
	_, files := buildLog(t)
	at := locate(t, files, 40)
	lines := readLines(t, at.file)
	lines[at.idx] = lines[at.idx][:len(lines[at.idx])/2]
	writeLines(t, at.file, lines)
	_, err := Verify(files...)
	wantChainErr(t, err, KindMalformed, at.file, at.idx+1)

	// An incomplete last line in the live file.
	live := files[len(files)-1]
	b, _ := os.ReadFile(live)
	if err := os.WriteFile(live, b[:len(b)-5], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = VerifyWith(VerifyOptions{AllowNonGenesisStart: true}, live)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Kind != KindMalformed {
		t.Fatalf("got %v, want malformed", err)
	}
}

func TestReopenContinues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{})
	for i := range 10 {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	hash, seq := l.LastHash(), l.LastSeq()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(rec(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}

	l = mustOpen(t, path, Options{})
	if l.LastHash() != hash || l.LastSeq() != seq {
		t.Fatalf("reopened at %d %s, want %d %s", l.LastSeq(), l.LastHash(), seq, hash)
	}
	for i := 10; i < 20; i++ {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Rotate, then close with an empty live file: the next Open must
	// continue from the rotated file.
	if err := l.Rotate(); err != nil {
		t.Fatal(err)
	}
	hash = l.LastHash()
	l.Close()
	l = mustOpen(t, path, Options{})
	if l.LastHash() != hash || l.LastSeq() != 20 {
		t.Fatalf("reopened after rotation at %d %s, want 20 %s", l.LastSeq(), l.LastHash(), hash)
	}
	for i := 20; i < 30; i++ {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 30 || len(files) != 2 {
		t.Fatalf("report %+v, files %v", rep, files)
	}
}

func TestOpenCorruptTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := mustOpen(t, path, Options{})
	for i := range 3 {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	good, _ := os.ReadFile(path)

	for name, tail := range map[string]string{
		"partial":   `{"seq":4,"time":"2026`,
		"garbage":   "not json\n",
		"bad prev":  `{"seq":4,"prev":"xyz"}` + "\n",
		"empty ln":  "\n",
		"zero seq":  `{"prev":"` + Genesis + `"}` + "\n",
		"truncated": "",
	} {
		content := append(slices.Clone(good), tail...)
		if name == "truncated" {
			content = good[:len(good)-1]
		}
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path, Options{})
		if !errors.Is(err, ErrCorruptTail) {
			t.Errorf("%s: Open error %v, want ErrCorruptTail", name, err)
		}
	}
}

func TestConcurrentAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 20000})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				if err := l.Append(rec(g*100 + i)); err != nil {
					t.Error(err)
					return
				}
				if i == 20 && g%8 == 0 {
					if err := l.Rotate(); err != nil {
						t.Error(err)
					}
				}
				_ = l.LastHash()
			}
		}()
	}
	wg.Wait()
	l.Close()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 640 || rep.LastSeq != 640 {
		t.Fatalf("report %+v", rep)
	}
	seen := map[uint64]bool{}
	pids := map[int32]bool{}
	for _, f := range files {
		for _, line := range readLines(t, f) {
			var r Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatal(err)
			}
			if seen[r.Seq] || pids[r.PID] {
				t.Fatalf("duplicate seq %d / pid %d", r.Seq, r.PID)
			}
			seen[r.Seq], pids[r.PID] = true, true
		}
	}
	if len(seen) != 640 {
		t.Fatalf("%d unique seqs", len(seen))
	}
}

// faultyFile fails writes (after writing half the bytes) or syncs.
type faultyFile struct {
	file
	failWrite, failSync int
}

func (f *faultyFile) Write(b []byte) (int, error) {
	if f.failWrite > 0 {
		f.failWrite--
		n, _ := f.file.Write(b[:len(b)/2])
		return n, errors.New("injected write failure")
	}
	return f.file.Write(b)
}

func (f *faultyFile) Sync() error {
	if f.failSync > 0 {
		f.failSync--
		return errors.New("injected fsync failure")
	}
	return f.file.Sync()
}

func TestFailedWriteKeepsChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{})
	defer l.Close()
	for i := range 5 {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := os.ReadFile(path)
	hash := l.LastHash()

	ff := &faultyFile{file: l.f}
	l.f = ff
	for _, what := range []string{"write", "fsync"} {
		if what == "write" {
			ff.failWrite = 1
		} else {
			ff.failSync = 1
		}
		if err := l.Append(rec(99)); err == nil {
			t.Fatalf("%s failure: Append succeeded", what)
		}
		if l.LastSeq() != 5 || l.LastHash() != hash {
			t.Fatalf("%s failure advanced the chain to %d", what, l.LastSeq())
		}
		after, _ := os.ReadFile(path)
		if string(after) != string(before) {
			t.Fatalf("%s failure left %d extra bytes", what, len(after)-len(before))
		}
	}
	for i := 5; i < 10; i++ {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := Verify(path)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 10 {
		t.Fatalf("report %+v", rep)
	}
}

func TestFailedWriteUnrepairable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{})
	defer l.Close()
	if err := l.Append(rec(0)); err != nil {
		t.Fatal(err)
	}
	ff := &truncFail{faultyFile: faultyFile{file: l.f, failWrite: 1}, failTrunc: 1}
	l.f = ff
	if err := l.Append(rec(1)); err == nil {
		t.Fatal("Append succeeded")
	}
	// The partial line is still there: the next Append repairs it first.
	if err := l.Append(rec(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

type truncFail struct {
	faultyFile
	failTrunc int
}

func (f *truncFail) Truncate(n int64) error {
	if f.failTrunc > 0 {
		f.failTrunc--
		return errors.New("injected truncate failure")
	}
	return f.faultyFile.Truncate(n)
}

func TestDevFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("/dev/full not available")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "full.log")
	if err := os.Symlink("/dev/full", path); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Skipf("cannot open /dev/full: %v", err)
	}
	defer l.Close()
	if err := l.Append(rec(0)); err == nil {
		t.Fatal("Append to /dev/full succeeded")
	}
	if l.LastSeq() != 0 || l.LastHash() != Genesis {
		t.Fatal("failed Append advanced the chain")
	}
	if err := l.Append(rec(1)); err == nil {
		t.Fatal("second Append to /dev/full succeeded")
	}

	// A good log next to it is unaffected and verifies.
	good := mustOpen(t, filepath.Join(dir, "good.log"), Options{})
	for i := range 3 {
		if err := good.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	good.Close()
	if _, err := Verify(filepath.Join(dir, "good.log")); err != nil {
		t.Fatal(err)
	}
}

func TestRotatedNamesMonotonic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{Sync: SyncNever})
	defer l.Close()
	clock := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return clock }
	for i := range 6 {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
		if err := l.Rotate(); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			clock = clock.Add(-time.Hour) // clock steps back
		}
	}
	if err := l.Rotate(); err != nil { // empty: no-op
		t.Fatal(err)
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 7 {
		t.Fatalf("files %v", files)
	}
	if !strings.HasSuffix(files[0], ".20260501T120000.000000000Z") {
		t.Fatalf("unexpected name %s", files[0])
	}
	rep, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 6 {
		t.Fatalf("report %+v", rep)
	}
}

func TestVerifyErrors(t *testing.T) {
	if _, err := Verify(); err == nil {
		t.Fatal("Verify() succeeded")
	}
	if _, err := Verify(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("Verify(missing) succeeded")
	}
	if _, err := Files(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Files(missing): %v", err)
	}
}
