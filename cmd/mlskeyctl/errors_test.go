package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// runCLIWith runs mlskeyctl in-process like runCLI, with c adjusted by set.
func runCLIWith(t *testing.T, socket, stdin string, set func(*cli), args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{
		ctx:           context.Background(),
		stdin:         strings.NewReader(stdin),
		stdout:        &out,
		stderr:        &errb,
		defaultSocket: socket,
	}
	if set != nil {
		set(c)
	}
	code = c.run(args)
	return code, out.String(), errb.String()
}

// decodeJSONError checks that stderr is one JSON error object and
// returns its body.
func decodeJSONError(t *testing.T, stderr string) errorBody {
	t.Helper()
	var e struct {
		Error *errorBody `json:"error"`
	}
	if strings.Count(stderr, "\n") != 1 || json.Unmarshal([]byte(stderr), &e) != nil || e.Error == nil {
		t.Fatalf("stderr is not one JSON error line: %q", stderr)
	}
	return *e.Error
}

func TestJSONErrors(t *testing.T) {
	_, sock := startFake(t)
	for _, tt := range []struct {
		args              []string
		exit              int
		code, field, text string
	}{
		{[]string{"key", "show", "abc"}, 1, "not_found", "", `key "abc" not found`},
		{[]string{"decrypt", "--key", "leaf-1", "--kem-output", "01", "--ciphertext", "02"}, 1, "invalid_argument", "kem_output", "kem_output: not a point"},
		{[]string{"key", "list", "--role", "x"}, 2, "usage", "", "key list: invalid value"},
		{[]string{"keypackage", "create", "--suite", "1", "--identity", "a", "--out", "-"}, 2, "usage", "", "--out - and --json"},
		{[]string{"status", "--socket", "/nonexistent/s.sock"}, 1, "unavailable", "", "cannot reach mlskeyd at /nonexistent/s.sock: no such socket"},
	} {
		code, stdout, stderr := runCLI(t, sock, "", append(tt.args, "--json")...)
		if code != tt.exit || stdout != "" {
			t.Errorf("%q: exit %d, stdout %q", tt.args, code, stdout)
		}
		e := decodeJSONError(t, stderr)
		if e.Code != tt.code || e.Field != tt.field || !strings.Contains(e.Message, tt.text) {
			t.Errorf("%q: error %+v, want code %q field %q message with %q", tt.args, e, tt.code, tt.field, tt.text)
		}
	}
}

// TestConnectionErrors: each way of not reaching the daemon is one line
// saying which, with a hint, never gRPC's transport text.
func TestConnectionErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "mlskeyctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// A socket left by a daemon that is gone: nothing listens on it.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, tt := range []struct {
		sock string
		want string
	}{
		{filepath.Join(dir, "absent.sock"), "no such socket (is mlskeyd running? see --socket and MLSKEYD_SOCKET)"},
		{stale, "connection refused: the socket is left from a daemon that is no longer running (start mlskeyd"},
		{dir, "not a socket"},
	} {
		for _, args := range [][]string{{"status"}, {"key", "list"}, {"keypackage", "create", "--suite", "1", "--identity", "a"}} {
			code, stdout, stderr := runCLI(t, tt.sock, "", args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, "cannot reach mlskeyd at "+tt.sock+": "+tt.want) {
				t.Errorf("%s %q: exit %d, stderr %q", tt.sock, args, code, stderr)
			}
			checkOneErrorLine(t, stderr)
			if strings.Contains(stderr, "desc =") || strings.Contains(stderr, "transport") {
				t.Errorf("raw gRPC text: %q", stderr)
			}
		}
	}
	// Permission denied cannot be staged for root (it may connect to
	// anything); the mapping itself is checked here, the real refusal in
	// e2e.TestConnectionErrorsSpeak.
	for _, err := range []error{
		&net.OpError{Op: "dial", Net: "unix", Err: &os.SyscallError{Syscall: "connect", Err: syscall.EACCES}},
		&os.PathError{Op: "stat", Path: "/x", Err: syscall.EACCES},
	} {
		got := connectError("/run/mlskeyd/mlskeyd.sock", err).Error()
		if !strings.HasPrefix(got, "cannot reach mlskeyd at /run/mlskeyd/mlskeyd.sock: permission denied (mlskeyd's --socket-mode and --socket-group") {
			t.Errorf("%v: %q", err, got)
		}
	}
}

func TestTimeoutScalesWithCount(t *testing.T) {
	fake, sock := startFake(t)
	left := func(args ...string) time.Duration {
		t.Helper()
		mustRun(t, sock, "", append([]string{"keypackage", "create", "--suite", "1", "--identity", "a"}, args...)...)
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return fake.kpTimeLeft
	}
	if d := left("--count", "1000"); d <= 17*time.Minute || d > 17*time.Minute+10*time.Second {
		t.Errorf("--count 1000 without --timeout: deadline in %v, want about 17m10s", d)
	}
	if d := left("--count", "1"); d > 31*time.Second || d < 20*time.Second {
		t.Errorf("--count 1: deadline in %v, want about 30s", d)
	}
	if d := left("--count", "1000", "--timeout", "5s"); d > 5*time.Second {
		t.Errorf("--count 1000 --timeout 5s: deadline in %v", d)
	}
	if d := left("--count", "1000", "--timeout", "0"); d != 0 {
		t.Errorf("--timeout 0: deadline in %v, want none", d)
	}
	if d := mustRunLeft(t, fake, sock, "--timeout", "7s", "keypackage", "create", "--suite", "1", "--identity", "a", "--count", "1000"); d > 7*time.Second {
		t.Errorf("--timeout before the command: deadline in %v", d)
	}
}

func mustRunLeft(t *testing.T, fake *fakeServer, sock string, args ...string) time.Duration {
	t.Helper()
	mustRun(t, sock, "", args...)
	fake.mu.Lock()
	defer fake.mu.Unlock()
	return fake.kpTimeLeft
}

// TestTimedOutBatch: a client that gave up cannot know whether the batch
// was committed, and says so with how to check.
func TestTimedOutBatch(t *testing.T) {
	_, sock := startFake(t)
	code, _, stderr := runCLI(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "slow", "--count", "3", "--timeout", "200ms")
	if code != 1 || !strings.Contains(stderr, "within 200ms (see --timeout); the daemon may still have created the 3 KeyPackage(s)") ||
		!strings.Contains(stderr, "mlskeyctl key list --role init --state active") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	checkOneErrorLine(t, stderr)
}

// TestInterrupted: a command ended by Ctrl-C exits 130 with one line.
func TestInterrupted(t *testing.T) {
	fake, sock := startFake(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"sign", "--key", "slow", "--label", "FramedContentTBS"}, "mlskeyctl: interrupted\n"},
		{[]string{"keypackage", "create", "--suite", "1", "--identity", "slow"}, "mlskeyctl: interrupted: the daemon may still have created the 1 KeyPackage(s)"},
	} {
		started := make(chan struct{})
		fake.mu.Lock()
		fake.started = started
		fake.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		var sig syscall.Signal
		go func() {
			<-started
			sig = syscall.SIGINT
			cancel()
		}()
		code, _, stderr := runCLIWith(t, sock, "", func(c *cli) {
			c.ctx = ctx
			c.interrupted = func() syscall.Signal { return sig }
		}, tt.args...)
		if code != 130 || !strings.HasPrefix(stderr, tt.want) {
			t.Errorf("%q: exit %d, stderr %q", tt.args, code, stderr)
		}
		checkOneErrorLine(t, stderr)
	}
}

func TestKeyPackageOutCheckedFirst(t *testing.T) {
	fake, sock := startFake(t)
	code, stdout, stderr := runCLI(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "a", "--out", "/nonexistent/dir/kp.bin")
	if code != 1 || stdout != "" || stderr != "mlskeyctl: keypackage create: cannot write --out /nonexistent/dir/kp.bin: no such file or directory; nothing created\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	dir := t.TempDir()
	code, _, stderr = runCLI(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "a", "--out", dir)
	if code != 1 || stderr != "mlskeyctl: keypackage create: cannot write --out "+dir+": is a directory; nothing created\n" {
		t.Errorf("--out DIR: exit %d, stderr %q", code, stderr)
	}
	if fake.lastKeyPackageRequest() != nil {
		t.Fatal("keys were created before the output path was checked")
	}
	out := filepath.Join(dir, "kp.bin")
	mustRun(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "a", "--count", "2", "--out", out)
	b, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(b, []byte{0, 1, 0, 5, 0, 0, 1, 0, 5, 1}) {
		t.Fatalf("--out file %x %v", b, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left beside --out: %v", entries)
	}
	// A failed request leaves no file and no temporary one.
	out2 := filepath.Join(dir, "none.bin")
	if code, _, _ := runCLI(t, sock, "", "keypackage", "create", "--signature-key", "nope", "--identity", "a", "--out", out2); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left after a failed request: %v", entries)
	}
}

func TestVersionWithDaemon(t *testing.T) {
	_, sock := startFake(t)
	out := mustRun(t, sock, "", "version")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "mlskeyctl ") || lines[1] != "mlskeyd 0.0.0-test (at "+sock+")" {
		t.Errorf("version with a daemon: %q", out)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(mustRun(t, sock, "", "version", "--json")), &v); err != nil || v["daemon_version"] != "0.0.0-test" || v["version"] == "" {
		t.Errorf("version --json: %v %v", v, err)
	}
	// Without a daemon: mlskeyctl's own, exit 0.
	out = mustRun(t, filepath.Join(t.TempDir(), "absent.sock"), "", "version")
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "mlskeyctl ") {
		t.Errorf("version without a daemon: %q", out)
	}
}

func TestKeyListColumnsAndOwner(t *testing.T) {
	fake, sock := startFake(t)
	out := mustRun(t, sock, "", "key", "list")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("key list:\n%s", out)
	}
	for i, want := range [][]string{
		{"ID", "SUITE", "ROLE", "STATE", "PROTECTION", "OWNER", "KP", "REF", "LAST", "RESORT", "CREATED"},
		{"sig-1", "1", "signature", "active", "hardware", "-", "-", "-", "2026-01-02T03:04:05Z"},
		{"init-1", "1", "init", "consumed", "sealed", "-", "feed", "yes", "2026-01-02T03:04:05Z"},
		{"leaf-1", "1", "leaf-encryption", "active", "wrapped", "uid:1000", "feed", "-", "-"},
	} {
		if got := strings.Fields(lines[i]); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("line %d: %q, want %q", i, got, want)
		}
	}
	fake.listRequests()
	mustRun(t, sock, "", "key", "list", "--owner", "1000")
	for _, r := range fake.listRequests() {
		if r.OwnerUid == nil || *r.OwnerUid != 1000 {
			t.Errorf("--owner 1000: request %v", r)
		}
	}
	mustRun(t, sock, "", "key", "list")
	if r := fake.listRequests()[0]; r.OwnerUid != nil {
		t.Errorf("no --owner: request %v", r)
	}
	if code, _, stderr := runCLI(t, sock, "", "key", "list", "--owner", "bob"); code != 2 || !strings.Contains(stderr, `"bob" is not a uid`) {
		t.Errorf("--owner bob: exit %d %q", code, stderr)
	}
}

func TestKeyDeleteConfirms(t *testing.T) {
	fake, sock := startFake(t)
	deleted := func() int {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		n := len(fake.deleted)
		fake.deleted = nil
		return n
	}
	terminal := func(c *cli) { c.isTerminal = func() bool { return true } }
	for _, tt := range []struct {
		stdin   string
		set     func(*cli)
		args    []string
		code    int
		asked   bool
		deleted int
	}{
		{"n\n", terminal, nil, 1, true, 0},
		{"", terminal, nil, 1, true, 0}, // end of input is no
		{"yes\n", terminal, nil, 0, true, 1},
		{"", terminal, []string{"--yes"}, 0, false, 1},
		{"", nil, nil, 0, false, 1}, // not a terminal: a script
	} {
		code, _, stderr := runCLIWith(t, sock, tt.stdin, tt.set, append([]string{"key", "delete", "sig-1"}, tt.args...)...)
		asked := strings.Contains(stderr, "Delete signature key sig-1 (suite 1, active, owner -)? Its private key is destroyed for good. [y/N] ")
		if code != tt.code || asked != tt.asked || deleted() != tt.deleted {
			t.Errorf("stdin %q %q: exit %d, stderr %q", tt.stdin, tt.args, code, stderr)
		}
		if code == 1 && !strings.HasSuffix(stderr, "mlskeyctl: key delete: not confirmed; key sig-1 is unchanged\n") {
			t.Errorf("refusal: %q", stderr)
		}
	}
}

func TestAttestMakesNonce(t *testing.T) {
	fake, sock := startFake(t)
	for range 2 {
		if code, _, stderr := runCLI(t, sock, "", "key", "attest", "sig-1"); code != 1 || !strings.Contains(stderr, "unimplemented: key_id: the device cannot attest keys") {
			t.Fatalf("exit %d, %q", code, stderr)
		}
	}
	runCLI(t, sock, "", "key", "attest", "sig-1", "--nonce", "0102")
	fake.mu.Lock()
	defer fake.mu.Unlock()
	n := fake.nonces
	if len(n) != 3 || len(n[0]) != 32 || len(n[1]) != 32 || bytes.Equal(n[0], n[1]) || !bytes.Equal(n[2], []byte{1, 2}) {
		t.Errorf("nonces %x", n)
	}
}

func TestDecryptCommand(t *testing.T) {
	_, sock := startFake(t)
	if out := mustRun(t, sock, "", "decrypt", "--key", "leaf-1", "--kem-output", "aabb", "--ciphertext", "010203", "--context", "ff"); out != "030201ff\n" {
		t.Errorf("decrypt: %q", out)
	}
	var j map[string]string
	if err := json.Unmarshal([]byte(mustRun(t, sock, "", "decrypt", "--key", "leaf-1", "--kem-output", "aabb", "--ciphertext", "0102", "--json")), &j); err != nil || j["plaintext"] != "0201" {
		t.Errorf("decrypt --json: %v %v", j, err)
	}
	out := filepath.Join(t.TempDir(), "pt")
	if s := mustRun(t, sock, "", "decrypt", "--key", "leaf-1", "--kem-output", "aabb", "--ciphertext", "0102", "--out", out); s != "" {
		t.Errorf("decrypt --out printed %q", s)
	}
	fi, err := os.Stat(out)
	b, _ := os.ReadFile(out)
	if err != nil || fi.Mode().Perm() != 0o600 || !bytes.Equal(b, []byte{2, 1}) {
		t.Errorf("--out file: %v %v %x", fi, err, b)
	}
	code, _, stderr := runCLI(t, sock, "", "decrypt", "--key", "leaf-1", "--kem-output", "01", "--ciphertext", "02")
	if code != 1 || stderr != "mlskeyctl: invalid argument: kem_output: not a point of the suite's curve\n" {
		t.Errorf("bad kem_output: exit %d %q", code, stderr)
	}
}

// TestLostConnection: a daemon that goes away mid-call is reported in one
// line, not as gRPC's transport text.
func TestLostConnection(t *testing.T) {
	dir, err := os.MkdirTemp("", "mlskeyctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	fake := &fakeServer{started: started}
	srv := grpc.NewServer()
	mlskeyv1.RegisterKeyServiceServer(srv, fake)
	go srv.Serve(ln)
	go func() {
		<-started
		srv.Stop()
	}()
	code, _, stderr := runCLI(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "slow")
	if code != 1 || !strings.HasPrefix(stderr, "mlskeyctl: lost the connection to mlskeyd at "+sock+": it stopped or restarted (see its log); the daemon may still have created the 1 KeyPackage(s)") {
		t.Errorf("exit %d, %q", code, stderr)
	}
	checkOneErrorLine(t, stderr)
}

// TestDeleteConfirmInterrupted: Ctrl-C at the prompt is a no, at once.
func TestDeleteConfirmInterrupted(t *testing.T) {
	fake, sock := startFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdin, w := io.Pipe() // never answered
	defer w.Close()
	var errb bytes.Buffer
	c := &cli{ctx: ctx, stdin: stdin, stdout: io.Discard, defaultSocket: sock,
		stderr:      writerFunc(func(p []byte) (int, error) { cancel(); return errb.Write(p) }),
		isTerminal:  func() bool { return true },
		interrupted: func() syscall.Signal { return syscall.SIGINT },
	}
	if code := c.run([]string{"key", "delete", "sig-1"}); code != 130 || !strings.HasSuffix(errb.String(), "mlskeyctl: interrupted\n") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if len(fake.deleted) != 0 {
		t.Error("deleted after Ctrl-C")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
