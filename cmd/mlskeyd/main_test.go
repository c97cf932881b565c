package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runMain runs mlskeyd's main logic as main does and returns the exit
// status with what went to stdout and stderr.
func runMain(t *testing.T, environ map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	out := &logOutput{primary: &stderr}
	code := exitCode(out, run(args, env(environ), &stdout, out))
	return code, stdout.String(), stderr.String()
}

// TestRefusalsSpeak: every refusal exits 1 with one line saying what is
// wrong; help and version exit 0.
func TestRefusalsSpeak(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	malformed := write("malformed.json", "{\n  \"socket\": \"/x\",\n  \"log_level\" \"debug\"\n}")
	unknown := write("unknown.json", `{"sockett": "/x"}`)
	pin := write("pin.json", `{"pkcs11_pin": "s3cr3t-PIN"}`)
	array := write("array.json", `[1, 2]`)
	truncated := write("truncated.json", `{"socket": `)
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want []string // substrings of the one line
	}{
		{"missing config", nil, []string{"--config", "/nonexistent.json"}, []string{"config file /nonexistent.json: no such file or directory"}},
		{"malformed config", nil, []string{"--config", malformed}, []string{malformed, "line 3", "not valid JSON"}},
		{"truncated config", nil, []string{"--config", truncated}, []string{truncated, "unexpected end"}},
		{"not an object", nil, []string{"--config", array}, []string{array, "JSON object"}},
		{"unknown key", nil, []string{"--config", unknown}, []string{`unknown key "sockett"`, `did you mean "socket"?`}},
		{"PIN in config", nil, []string{"--config", pin}, []string{"PIN does not belong in a config file", "pkcs11_pin_file"}},
		{"config from env", map[string]string{"MLSKEYD_CONFIG": unknown}, nil, []string{`unknown key "sockett"`}},
		{"unknown flag", nil, []string{"--sockett", "/x"}, []string{"unknown flag --sockett", "did you mean --socket?"}},
		{"far-off flag", nil, []string{"--zzzzzzzz"}, []string{"unknown flag --zzzzzzzz; see mlskeyd --help"}},
		{"PIN flag", nil, []string{"--pkcs11-pin", "s3cr3t-PIN"}, []string{"--pkcs11-pin-file"}},
		{"flag without value", nil, []string{"--socket"}, []string{"flag needs an argument: --socket"}},
		{"stray argument", nil, []string{"serve"}, []string{`unexpected argument "serve"`}},
		{"bad backend", nil, []string{"--backend", "hsm"}, []string{`--backend "hsm"`}},
		{"dev without state", nil, []string{"--dev"}, []string{"--dev needs --state-dir"}},
		{"socket mode", map[string]string{"MLSKEYD_SOCKET_MODE": "abc"}, nil, []string{`--socket-mode: "abc"`, "0000 to 0777"}},
		{"loaded keys", nil, []string{"--tpm-loaded-keys", "-1"}, []string{`--tpm-loaded-keys: "-1" is not an integer from 1 to 64`}},
		{"sessions", nil, []string{"--pkcs11-max-sessions", "x"}, []string{"from 0 to 1024"}},
		{"tpm timeout", nil, []string{"--tpm-command-timeout", "0"}, []string{`--tpm-command-timeout: "0" is not a duration from 1ms to 1h0m0s (e.g. 10m or 30s)`}},
		{"sweep interval", nil, []string{"--sweep-interval", "2d"}, []string{`--sweep-interval: "2d" is not a duration from 0s to 24h0m0s (e.g. 10m or 30s)`}},
		{"lifetime 0", nil, []string{"--keypackage-lifetime", "0"}, []string{"--keypackage-lifetime", "from 1h0m0s to"}},
		{"lifetime 1ns", nil, []string{"--keypackage-lifetime", "1ns"}, []string{"from 1h0m0s to"}},
		{"lifetime over max", nil, []string{"--keypackage-lifetime", "400d"}, []string{"over --keypackage-max-lifetime"}},
		{"log level", nil, []string{"--log-level", "loud"}, []string{`--log-level "loud": want debug, info, warn or error`}},
		{"bool", nil, []string{"--audit-fail-closed=maybe"}, []string{"--audit-fail-closed"}},
		{"init-key protection level", nil, []string{"--init-key-protection", "strong"}, []string{`--init-key-protection: unknown level "strong" (want hardware, wrapped or sealed)`}},
		{"init-key protection suite", nil, []string{"--init-key-protection", "99=wrapped"}, []string{`--init-key-protection: "99" is not a known cipher suite`}},
		{"init-key protection shared", nil, []string{"--init-key-protection", "1=wrapped,3=sealed"}, []string{"suites 1 and 3 share x25519 keys"}},
		{"tpm revocation roles", nil, []string{"--tpm-revocation-roles", "signature"}, []string{`--tpm-revocation-roles "signature" is not supported (want hpke or all)`}},
		{"unknown socket group", nil, []string{"--socket-group", "no-such-group-mlskeyd"}, []string{`--socket-group: no group "no-such-group-mlskeyd" on this system (create it with groupadd, or give a gid)`}},
	} {
		code, stdout, stderr := runMain(t, tt.env, tt.args...)
		if code != 1 || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q; want 1 and nothing", tt.name, code, stdout)
		}
		if !strings.HasPrefix(stderr, "mlskeyd: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
			t.Errorf("%s: stderr is not one 'mlskeyd: ' line: %q", tt.name, stderr)
		}
		for _, w := range tt.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: %q does not say %q", tt.name, stderr, w)
			}
		}
		if strings.Contains(stderr, "s3cr3t-PIN") {
			t.Errorf("%s: the error shows the PIN: %q", tt.name, stderr)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, stdout, stderr := runMain(t, nil, args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "usage: mlskeyd") || !strings.Contains(stdout, "-socket-mode") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.60q", args, code, stderr, stdout)
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}, {"version", "--config", "/nonexistent.json"}} {
		code, stdout, stderr := runMain(t, nil, args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "mlskeyd ") || strings.Count(stdout, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q, stdout %q", args, code, stderr, stdout)
		}
	}
	if code, _, stderr := runMain(t, nil, "version", "extra"); code != 1 || !strings.Contains(stderr, `unexpected argument "extra"`) {
		t.Errorf("version extra: exit %d, %q", code, stderr)
	}
}

// TestBadSettingCreatesNothing: a setting in error is refused before dev
// mode creates its token, PIN or catalog.
func TestBadSettingCreatesNothing(t *testing.T) {
	for name, tt := range map[string]struct {
		env  map[string]string
		args []string
	}{
		"socket mode": {map[string]string{"MLSKEYD_SOCKET_MODE": "abc"}, nil},
		"loaded keys": {nil, []string{"--backend", "tpm", "--tpm-loaded-keys", "-1"}},
		"lifetime":    {nil, []string{"--keypackage-lifetime", "1ns"}},
		"policy":      {nil, []string{"--require-hardware", "everything"}},
		"admin uids":  {nil, []string{"--admin-uids", "root"}},
		// Not dev mode (which makes a PIN): a token without a PIN.
		"no PIN":  {nil, []string{"--dev=false", "--pkcs11-module", "/nonexistent/module.so"}},
		"bad URI": {nil, []string{"--dev=false", "--pkcs11-uri", "pkcs11:token=x;colour=blue"}},
	} {
		state := filepath.Join(t.TempDir(), "state")
		code, _, stderr := runMain(t, tt.env, append([]string{"--dev", "--state-dir", state}, tt.args...)...)
		if code != 1 || stderr == "" {
			t.Errorf("%s: exit %d, stderr %q", name, code, stderr)
		}
		if _, err := os.Stat(state); err == nil {
			entries, _ := os.ReadDir(state)
			t.Errorf("%s: the state directory was created (%d entries) before the setting was checked", name, len(entries))
		}
	}
}

// TestLogOutputSurvivesClosedPipe: once stderr's reader is gone, records
// go to the fallback file, and writing never fails.
func TestLogOutputSurvivesClosedPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fallback := filepath.Join(t.TempDir(), "mlskeyd.log")
	o := &logOutput{primary: w}
	if _, err := o.Write([]byte("first\n")); err != nil {
		t.Fatal(err)
	}
	r.Close()
	// Without a fallback yet, records are dropped quietly.
	if n, err := o.Write([]byte("dropped\n")); err != nil || n != 8 {
		t.Fatalf("write after the reader closed: %d %v", n, err)
	}
	o.setFallback(fallback)
	for _, line := range []string{"shutting down\n", "stopped\n"} {
		if _, err := o.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(fallback)
	if err != nil || string(b) != "shutting down\nstopped\n" {
		t.Fatalf("fallback file %q %v", b, err)
	}
	// A write error that is not a closed reader is reported as is.
	o = &logOutput{primary: errWriter{syscall.ENOSPC}}
	if _, err := o.Write([]byte("x")); err == nil {
		t.Fatal("ENOSPC hidden")
	}
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

// TestBindingHintNamesTheBackendsSettings: the refusal to pair a catalog
// and a device names the settings of the backend in use only.
func TestBindingHintNamesTheBackendsSettings(t *testing.T) {
	for _, c := range []struct {
		backend     string
		want, wrong string
	}{
		{"pkcs11", "(--pkcs11-uri, --pkcs11-module, --pkcs11-token or --pkcs11-serial)", "--tpm"},
		{"tpm", "(--tpm; each TPM needs its own state directory)", "--pkcs11"},
	} {
		h := bindingHint(c.backend, true)
		if !strings.Contains(h, c.want) || strings.Contains(h, c.wrong) || !strings.Contains(h, "--adopt-device") {
			t.Errorf("%s: %q", c.backend, h)
		}
		if strings.Contains(bindingHint(c.backend, false), "--adopt-device") {
			t.Errorf("%s: --adopt-device offered where it cannot help", c.backend)
		}
	}
}
