package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBinary builds mlskeyctl and runs it against the fake server.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	bin := filepath.Join(t.TempDir(), "mlskeyctl")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	fake, sock := startFake(t)

	run := func(t *testing.T, env []string, stdin string, args ...string) (code int, stdout, stderr string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			code = ee.ExitCode()
		default:
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}

	t.Run("key create --json", func(t *testing.T) {
		code, stdout, stderr := run(t, nil, "", "--socket", sock, "key", "create", "--suite", "1", "--json")
		if code != 0 || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("%v: %q", err, stdout)
		}
		if got, want := jsonKeys(t, m), []string{"created_at", "id", "protection", "public_key", "role", "state", "suite"}; !slices.Equal(got, want) {
			t.Errorf("members %q, want %q", got, want)
		}
		if m["id"] != "sig-1" || m["suite"] != 1.0 || m["public_key"] != strings.Repeat("ab", 32) ||
			m["protection"] != "hardware" || m["role"] != "signature" || m["state"] != "active" {
			t.Errorf("key %v", m)
		}
	})

	t.Run("server error", func(t *testing.T) {
		code, stdout, stderr := run(t, nil, "", "key", "show", "abc", "--socket", sock)
		if code != 1 || stdout != "" || stderr != "mlskeyctl: not found: key \"abc\" not found\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})

	t.Run("usage error", func(t *testing.T) {
		code, stdout, stderr := run(t, nil, "", "key", "list", "--role", "bogus")
		if code != 2 || stdout != "" {
			t.Errorf("exit %d, stdout %q", code, stdout)
		}
		checkOneErrorLine(t, stderr)
	})

	t.Run("sign reads stdin", func(t *testing.T) {
		content := strings.Repeat("framed content\n", 1000)
		// The socket from the environment.
		code, stdout, stderr := run(t, []string{"MLSKEYD_SOCKET=" + sock}, content, "sign", "--key", "sig-1", "--label", "FramedContentTBS")
		if code != 0 || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		if want := hex.EncodeToString(fakeSignature("FramedContentTBS", []byte(content))) + "\n"; stdout != want {
			t.Errorf("signature %q, want %q", stdout, want)
		}
	})

	t.Run("Ctrl-C exits 130", func(t *testing.T) {
		started := make(chan struct{})
		fake.mu.Lock()
		fake.started = started
		fake.mu.Unlock()
		cmd := exec.Command(bin, "--socket", sock, "sign", "--key", "slow", "--label", "FramedContentTBS")
		cmd.Stdin = strings.NewReader("content")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		<-started
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 || errb.String() != "mlskeyctl: interrupted\n" {
			t.Errorf("after SIGINT: %v, stderr %q", err, errb.String())
		}
	})

	t.Run("no daemon", func(t *testing.T) {
		code, _, stderr := run(t, []string{"MLSKEYD_SOCKET=" + filepath.Join(t.TempDir(), "absent.sock")}, "", "status")
		if code != 1 || !strings.Contains(stderr, "cannot reach mlskeyd") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
		checkOneErrorLine(t, stderr)
	})
}
