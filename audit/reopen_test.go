package audit

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// logrotate renames the live file and signals the daemon, which reopens
// the path: no record is lost while the rename and the reopen race with
// writers, and the chain runs on through every file logrotate made.
func TestReopenAfterExternalRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := mustOpen(t, path, Options{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := l.Append(rec(g*100 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var rotated []string
	for n := 3; n >= 1; n-- {
		name := path + "." + string(rune('0'+n)) // audit.log.3 is the oldest
		if err := os.Rename(path, name); err != nil {
			t.Fatal(err)
		}
		if err := l.Reopen(); err != nil {
			t.Fatal(err)
		}
		rotated = append(rotated, name)
	}
	wg.Wait()
	if err := l.Append(rec(999)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	rep, err := Verify(append(rotated, path)...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != 401 || rep.LastSeq != 401 {
		t.Fatalf("report %+v, want 401 records", rep)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new live file: %v %v", fi, err)
	}
}

// A path that cannot be reopened fails the reopen and the appends after
// it; once it can be opened again, the chain goes on.
func TestReopenFailureThenRecovery(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.log")
	l := mustOpen(t, path, Options{})
	defer l.Close()
	if err := l.Append(rec(1)); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(t.TempDir(), "audit.log.1")
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	// A directory in the file's place cannot be opened for writing.
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Fatal("reopen onto a directory succeeded")
	}
	if err := l.Append(rec(2)); err == nil {
		t.Fatal("append with no live file succeeded")
	}
	os.Remove(path)
	if err := l.Append(rec(3)); err != nil {
		t.Fatalf("append after the path came back: %v", err)
	}
	l.Close()
	if rep, err := Verify(moved, path); err != nil || rep.Records != 2 {
		t.Fatalf("Verify: %+v %v", rep, err)
	}
}
