package server

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestPeerAliveGuardsPIDReuse(t *testing.T) {
	pid := int32(os.Getpid())
	st, err := processStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !(PeerInfo{PID: pid, StartTime: st}).Alive() {
		t.Fatal("this process is not alive")
	}
	// The same PID with another start time is another process.
	if (PeerInfo{PID: pid, StartTime: st + 1}).Alive() {
		t.Fatal("a reused PID passed for the original process")
	}
	if (PeerInfo{PID: 1 << 30, StartTime: st}).Alive() {
		t.Fatal("a PID that does not exist is alive")
	}
	if processExe(pid) == "" {
		t.Fatal("own executable unreadable")
	}
}

func TestListenModesAndStaleSockets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "mlskeyd")
	path := filepath.Join(dir, "mlskeyd.sock")
	gid := -1
	if os.Getuid() == 0 {
		gid = 65534 // nogroup: root may give the socket to any group
	}
	l, err := Listen(path, 0o660, gid)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	di, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v", fi.Mode())
	}
	wantDir := os.FileMode(0o700)
	if gid != -1 {
		wantDir = 0o750
		if fi.Sys().(*syscall.Stat_t).Gid != uint32(gid) || di.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
			t.Fatal("socket or directory not given to the group")
		}
	}
	if di.Mode().Perm() != wantDir {
		t.Fatalf("directory mode %v, want %v", di.Mode().Perm(), wantDir)
	}
	// A live socket is refused.
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if _, err := Listen(path, 0o600, -1); err == nil {
		t.Fatal("a second daemon took a live socket")
	}
	// A stale one (no listener, file left behind) is replaced.
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(path, 0o600, -1)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()
	// A file that is not a socket is left alone.
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Listen(path, 0o600, -1); err == nil {
		t.Fatal("a regular file was replaced")
	}
}

func TestListenRefusesOpenSocketDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(filepath.Join(dir, "mlskeyd.sock"), 0o600, -1)
	if err == nil || !strings.Contains(err.Error(), "could replace the socket") {
		t.Fatalf("a world-writable socket directory was accepted: %v", err)
	}
	if os.Getuid() == 0 {
		os.Chmod(dir, 0o755)
		os.Chown(dir, 65534, -1)
		_, err := Listen(filepath.Join(dir, "mlskeyd.sock"), 0o600, -1)
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("a socket directory owned by another user was accepted: %v", err)
		}
	}
}

// The socket is bound under a strict umask, so between bind and chmod it
// is no wider than 0600, whatever the process's umask.
func TestListenBindsUnderStrictUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	var bound os.FileMode
	afterBind = func(path string) {
		if fi, err := os.Stat(path); err == nil {
			bound = fi.Mode().Perm()
		}
	}
	defer func() { afterBind = nil }()
	dir := filepath.Join(t.TempDir(), "run")
	l, err := Listen(filepath.Join(dir, "mlskeyd.sock"), 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if bound != 0o600 {
		t.Fatalf("socket bound with mode %04o, want 0600 until its group and mode are set", bound)
	}
	if cur := syscall.Umask(0); cur != 0 {
		t.Fatalf("umask left at %04o", cur)
	}
}
