package e2e

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// TestDaemonSurvivesClosedLogPipe: under "mlskeyd 2>&1 | tee log", Ctrl-C
// ends tee as well; the daemon must still shut down cleanly (socket
// removed, exit 0) and keep the record of its shutdown in the state
// directory instead of dying of SIGPIPE.
func TestDaemonSurvivesClosedLogPipe(t *testing.T) {
	state := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "mlskeyd"), "--dev", "--state-dir", state)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	sc := bufio.NewScanner(r)
	serving := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "msg=serving") {
			serving = true
			break
		}
	}
	if !serving {
		t.Fatalf("mlskeyd did not log serving: %v", sc.Err())
	}
	socket := filepath.Join(state, "mlskeyd.sock")
	if _, err := os.Stat(socket); err != nil {
		t.Fatal(err)
	}
	r.Close() // the reader (tee) is gone
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err = <-exited:
	case <-time.After(60 * time.Second):
		t.Fatal("mlskeyd did not stop on SIGINT")
	}
	if err != nil {
		t.Fatalf("mlskeyd after its log pipe closed: %v (%v)", err, cmd.ProcessState)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(state, "mlskeyd.log"))
	if err != nil || !strings.Contains(string(b), "shutting down") || !strings.Contains(string(b), "audit log closed") || !strings.Contains(string(b), "msg=stopped") {
		t.Errorf("shutdown record in STATE/mlskeyd.log: %v\n%s", err, b)
	}
}

// TestConnectionErrorsSpeak: after a daemon died without cleaning up, and
// for a user the socket does not admit, mlskeyctl says so in one line.
func TestConnectionErrorsSpeak(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	d.kill() // SIGKILL: the socket stays behind
	for _, args := range [][]string{{"status"}, {"key", "list"}} {
		_, errOut, code := d.ctl(args...)
		if code != 1 || errOut != "mlskeyctl: cannot reach mlskeyd at "+d.socket+": connection refused: the socket is left from a daemon that is no longer running (start mlskeyd, which replaces the stale socket)\n" {
			t.Errorf("%q on a stale socket: exit %d, %q", args, code, errOut)
		}
	}
	_, errOut, code := d.ctl("status", "--json")
	if code != 1 || !strings.HasPrefix(errOut, `{"error":{"code":"unavailable","field":"","message":"cannot reach mlskeyd at `) {
		t.Errorf("--json on a stale socket: exit %d, %q", code, errOut)
	}

	if os.Getuid() != 0 {
		t.Skip("needs root to run mlskeyctl as another user")
	}
	// The socket in a directory anyone may search, with the default mode
	// 0600: connect(2) itself is refused.
	sockDir, err := os.MkdirTemp("", "mlskeyd-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	os.Chmod(sockDir, 0o755)
	os.Chmod(binDir, 0o755)
	d = startDaemon(t, t.TempDir(), "--socket", filepath.Join(sockDir, "mlskeyd.sock"))
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	_, errOut, code = d.run(nobody, nil, "status")
	if code != 1 || !strings.HasPrefix(errOut, "mlskeyctl: cannot reach mlskeyd at "+d.socket+": permission denied (mlskeyd's --socket-mode and --socket-group decide who may connect") {
		t.Errorf("a user the socket does not admit: exit %d, %q", code, errOut)
	}
}

// TestOneVersion: both binaries of a build print one version, and
// mlskeyctl version shows the daemon's when it answers.
func TestOneVersion(t *testing.T) {
	out, err := exec.Command(filepath.Join(binDir, "mlskeyd"), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "mlskeyd ")
	if !ok || v == "" {
		t.Fatalf("mlskeyd version: %q", out)
	}
	d := startDaemon(t, t.TempDir())
	got, errOut, code := d.ctl("version")
	if want := "mlskeyctl " + v + "\nmlskeyd " + v + " (at " + d.socket + ")\n"; code != 0 || got != want {
		t.Errorf("mlskeyctl version: exit %d %q %q, want %q", code, got, errOut, want)
	}
}

// TestDaemonRefusalsSpeak: the real binary prints one line for every
// refusal, and nothing is created for a bad setting.
func TestDaemonRefusalsSpeak(t *testing.T) {
	for _, tt := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--config", "/nonexistent.json"}, "mlskeyd: config file /nonexistent.json: no such file or directory\n"},
		{[]string{"MLSKEYD_SOCKET_MODE=abc"}, []string{"--dev", "--state-dir", "STATE"}, "mlskeyd: --socket-mode: \"abc\" is not an octal file mode from 0000 to 0777 (e.g. 0660)\n"},
	} {
		state := filepath.Join(t.TempDir(), "state")
		args := tt.args
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], "STATE", state)
		}
		cmd := exec.Command(filepath.Join(binDir, "mlskeyd"), args...)
		cmd.Env = append(cleanEnv(), tt.env...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || stdout.String() != "" || stderr.String() != tt.want {
			t.Errorf("%q: %v, stdout %q, stderr %q", args, err, stdout.String(), stderr.String())
		}
		if _, err := os.Stat(state); err == nil {
			t.Errorf("%q: created %s", args, state)
		}
	}
	out, err := exec.Command(filepath.Join(binDir, "mlskeyd"), "--help").Output()
	if err != nil || !strings.HasPrefix(string(out), "usage: mlskeyd") {
		t.Errorf("mlskeyd --help: %v %.40q", err, out)
	}
}

// TestCLIDecryptOwnerAndCase: decrypt, key list --owner and upper-case key
// ids through the real binaries.
func TestCLIDecryptOwnerAndCase(t *testing.T) {
	d := startDaemon(t, t.TempDir(), "--admin-uids", "0")
	c := d.client()
	kp := createKPs(t, c, 1, 1).KeyPackages[0]
	leaf, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.LeafEncryptionKeyId})
	if err != nil {
		t.Fatal(err)
	}
	su, _ := mls.LookupSuite(1)
	gc := []byte("group context")
	kem, ct, err := su.EncryptWithLabel(leaf.PublicKey, "UpdatePathNode", gc, []byte("path secret"))
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := d.ctl("decrypt", "--key", strings.ToUpper(leaf.Id), "--kem-output", hex.EncodeToString(kem),
		"--ciphertext", hex.EncodeToString(ct), "--context", hex.EncodeToString(gc))
	if code != 0 || out != hex.EncodeToString([]byte("path secret"))+"\n" {
		t.Fatalf("decrypt: exit %d %q %q", code, out, errOut)
	}
	_, errOut, code = d.ctl("decrypt", "--key", leaf.Id, "--kem-output", hex.EncodeToString(kem),
		"--ciphertext", hex.EncodeToString(ct), "--context", "00", "--json")
	if code != 1 || errOut != `{"error":{"code":"invalid_argument","field":"ciphertext","message":"ciphertext: decryption failed"}}`+"\n" {
		t.Errorf("decrypt with the wrong context: exit %d %q", code, errOut)
	}
	_, errOut, code = d.ctl("sign", "--key", strings.ToUpper(kp.InitKeyId), "--label", "LeafNodeTBS")
	if code != 1 || !strings.Contains(errOut, "is an init key, not a signature key") {
		t.Errorf("sign with an init key: exit %d %q", code, errOut)
	}

	// An admin's KeyPackages for uid 4242, listed alone with --owner.
	out, errOut, code = d.ctl("keypackage", "create", "--suite", "1", "--identity", "carol", "--owner-uid", "4242", "--count", "2")
	if code != 0 {
		t.Fatalf("keypackage create --owner-uid: exit %d %s", code, errOut)
	}
	var keys []struct {
		ID, Owner string
	}
	d.ctlJSON(t, &keys, "key", "list", "--owner", "4242")
	if len(keys) != 5 {
		t.Fatalf("key list --owner 4242: %d keys, want 5 (signature, 2 init, 2 leaf)", len(keys))
	}
	for _, k := range keys {
		if k.Owner != "uid:4242" {
			t.Errorf("key list --owner 4242 shows %+v", k)
		}
	}
	out, _, _ = d.ctl("key", "list", "--owner", "4242", "--role", "init")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "OWNER") || !strings.Contains(lines[1], "uid:4242") || !strings.Contains(lines[1], " no ") {
		t.Errorf("key list text:\n%s", out)
	}
}
