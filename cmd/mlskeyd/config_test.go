package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "mlskeyd.json")
	os.WriteFile(cfgFile, []byte(`{"socket": "/file.sock", "pkcs11_token": "file-token", "log_level": "warn", "pkcs11_max_sessions": 8, "dev": false}`), 0o600)

	s := newSettings()
	err := s.parse([]string{"--config", cfgFile, "--socket", "/flag.sock"}, env(map[string]string{
		"MLSKEYD_SOCKET":       "/env.sock",
		"MLSKEYD_PKCS11_TOKEN": "env-token",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"socket":              "/flag.sock", // flag beats env and file
		"pkcs11-token":        "env-token",  // env beats file
		"log-level":           "warn",       // file beats default
		"pkcs11-max-sessions": "8",
		"socket-mode":         "0600", // default
	} {
		if got := s.str(name); got != want {
			t.Errorf("%s = %q (from %s), want %q", name, got, s.byName[name].from, want)
		}
	}

	// The config file may also come from the environment.
	s = newSettings()
	if err := s.parse(nil, env(map[string]string{"MLSKEYD_CONFIG": cfgFile}), io.Discard); err != nil || s.str("socket") != "/file.sock" {
		t.Fatalf("MLSKEYD_CONFIG: %v %q", err, s.str("socket"))
	}
}

func TestSettingsRejects(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"pin in file": `{"pkcs11_pin": "1234"}`,
		"unknown key": `{"sockett": "/x"}`,
		"bad JSON":    `{`,
		"bad type":    `{"socket": ["a"]}`,
	} {
		f := filepath.Join(dir, "c.json")
		os.WriteFile(f, []byte(body), 0o600)
		if err := newSettings().parse([]string{"--config", f}, env(nil), io.Discard); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := newSettings().parse([]string{"--pkcs11-pin", "1234"}, env(nil), io.Discard); err == nil {
		t.Error("a PIN flag was accepted")
	}
	if err := newSettings().parse([]string{"stray"}, env(nil), io.Discard); err == nil {
		t.Error("a stray argument was accepted")
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "pin")
	os.WriteFile(f, []byte("secret-pin\n"), 0o600)
	if pin, err := readPIN(f, env(nil)); err != nil || pin != "secret-pin" {
		t.Fatalf("readPIN: %q %v", pin, err)
	}
	os.Chmod(f, 0o640)
	_, err := readPIN(f, env(nil))
	if err == nil || !strings.Contains(err.Error(), "0640") {
		t.Fatalf("group-readable PIN file: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret-pin") {
		t.Fatal("the error shows the PIN")
	}
	if pin, err := readPIN("", env(map[string]string{"MLSKEYD_PKCS11_PIN": "from-env"})); err != nil || pin != "from-env" {
		t.Fatalf("PIN from env: %q %v", pin, err)
	}
	if _, err := readPIN("", env(nil)); err == nil {
		t.Fatal("no PIN accepted")
	}
}

func TestMinProtection(t *testing.T) {
	m, err := minProtection("signature, leaf-encryption")
	if err != nil || len(m) != 2 {
		t.Fatalf("%v %v", m, err)
	}
	if m, err := minProtection("all"); err != nil || len(m) != 3 {
		t.Fatalf("all: %v %v", m, err)
	}
	if _, err := minProtection("signing"); err == nil {
		t.Fatal("unknown role accepted")
	}
}

func TestDurations(t *testing.T) {
	s := newSettings()
	s.byName["keypackage-lifetime"].value = "30d"
	if d, err := s.duration("keypackage-lifetime", time.Hour, maxLifetimeBound); err != nil || d.Hours() != 720 {
		t.Fatalf("30d: %v %v", d, err)
	}
	for _, bad := range []string{"-1h", "0", "soon", "0d", "1ns", "59m", "99999d", "999999999999999999999d"} {
		s.byName["keypackage-lifetime"].value = bad
		_, err := s.duration("keypackage-lifetime", time.Hour, maxLifetimeBound)
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "from 1h0m0s to") {
			t.Errorf("%q: the error does not give the valid range: %v", bad, err)
		}
	}
}

func TestPolicyAndAccessFromConfig(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(f, []byte(`{
		"admin_uids": [0, 1000], "admin_gids": "27",
		"audit": {"log": "/var/log/mlskeyd/audit.log", "fail_closed": true},
		"policy": {
			"allowed_suites": [2, 7],
			"min_protection": {"init": "hardware"},
			"allowed_labels": {"signature": ["LeafNodeTBS", "KeyPackageTBS"]},
			"keypackage_max_lifetime": "30d",
			"max_outstanding_keypackages": 100,
			"rate_limit": {"per_second": 50, "burst": 100}
		}}`), 0o600)
	s := newSettings()
	if err := s.parse([]string{"--config", f, "--require-hardware", "signature"}, env(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	p, err := loadPolicy(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AllowedSuites) != 2 || p.MinProtection["init"] != "hardware" || p.MinProtection["signature"] != "hardware" ||
		p.MaxOutstandingKeyPackages != 100 || p.RateLimit.Burst != 100 || p.KeyPackageMaxLifetime == 0 {
		t.Fatalf("policy: %+v", p)
	}
	a, err := loadAccess(s)
	if err != nil || len(a.AdminUIDs) != 2 || a.AdminGIDs[0] != 27 {
		t.Fatalf("access: %+v %v", a, err)
	}
	if s.str("audit-log") != "/var/log/mlskeyd/audit.log" || s.str("audit-fail-closed") != "true" {
		t.Fatalf("audit: %q %q", s.str("audit-log"), s.str("audit-fail-closed"))
	}

	for name, body := range map[string]string{
		"label outside RFC 9420": `{"policy": {"allowed_labels": {"signature": ["Welcome"]}}}`,
		"unknown policy field":   `{"policy": {"allowed_suite": [2]}}`,
		"unknown suite":          `{"policy": {"allowed_suites": [9]}}`,
		"unknown level":          `{"policy": {"min_protection": {"init": "titanium"}}}`,
	} {
		os.WriteFile(f, []byte(body), 0o600)
		s := newSettings()
		if err := s.parse([]string{"--config", f}, env(nil), io.Discard); err != nil {
			continue
		}
		if _, err := loadPolicy(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	os.WriteFile(f, []byte(`{"policy": {"allowed_suite": [2]}}`), 0o600)
	s = newSettings()
	if err := s.parse([]string{"--config", f}, env(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPolicy(s); err == nil || err.Error() != "config file "+f+`: policy: unknown key "allowed_suite" (did you mean "allowed_suites"?)` {
		t.Errorf("unknown policy key: %v", err)
	}
}

func TestReadSecretFileChecksTheOpenFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "pin")
	os.WriteFile(f, []byte("secret-pin\n"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(f, link)
	if _, err := readPIN(link, env(nil)); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("a symbolic link was followed: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readPIN(fifo, env(nil)); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a FIFO was read: %v", err)
	}
	if os.Getuid() == 0 {
		os.Chown(f, 65534, -1)
		_, err := readPIN(f, env(nil))
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("a PIN file of another user was accepted: %v", err)
		}
	}
}

func TestPINTakenFromEnvironment(t *testing.T) {
	t.Setenv(pinEnv, "from-env")
	getenv := takePINFromEnv(os.Getenv)
	if v, ok := os.LookupEnv(pinEnv); ok {
		t.Fatalf("MLSKEYD_PKCS11_PIN still in the environment: %q", v)
	}
	if pin, err := readPIN("", getenv); err != nil || pin != "from-env" {
		t.Fatalf("PIN from env: %q %v", pin, err)
	}
	// The daemon takes it out before anything else.
	t.Setenv(pinEnv, "from-env")
	run([]string{"--version"}, os.Getenv, io.Discard, &logOutput{primary: io.Discard})
	if _, ok := os.LookupEnv(pinEnv); ok {
		t.Fatal("run left MLSKEYD_PKCS11_PIN in the environment")
	}
}

func TestSimulatorOnlyInDevMode(t *testing.T) {
	state := t.TempDir()
	err := run([]string{"--backend", "tpm", "--tpm", "sim", "--state-dir", state, "--socket", filepath.Join(state, "s")}, env(nil), io.Discard, &logOutput{primary: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "--dev only") {
		t.Fatalf("--tpm sim outside --dev: %v", err)
	}
}

// TestSettingsVersionNotFromEnvironment: MLSKEYD_VERSION (a package
// version in a service's environment file, say) neither makes the daemon
// print its version and exit nor is taken as a setting.
func TestSettingsVersionNotFromEnvironment(t *testing.T) {
	for _, v := range []string{"1", "true", "v1.2.3"} {
		s := newSettings()
		if err := s.parse([]string{"--dev", "--state-dir", t.TempDir()}, env(map[string]string{"MLSKEYD_VERSION": v}), io.Discard); err != nil {
			t.Fatalf("MLSKEYD_VERSION=%s: %v", v, err)
		}
		if got, _ := s.bool("version"); got {
			t.Errorf("MLSKEYD_VERSION=%s: version set from the environment", v)
		}
	}
	s := newSettings()
	if err := s.parse([]string{"--version"}, env(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.bool("version"); !got {
		t.Error("--version not set")
	}
}

// TestTPMRevocationRoles: hpke by default, all from a config file, a flag
// overriding the file.
func TestTPMRevocationRoles(t *testing.T) {
	check := func(args []string, want bool) {
		t.Helper()
		s := newSettings()
		if err := s.parse(args, env(nil), io.Discard); err != nil {
			t.Fatal(err)
		}
		c, err := checkSettings(s)
		if err != nil {
			t.Fatal(err)
		}
		if c.tpmRevokeSign != want {
			t.Errorf("%v: signature keys get a bit: %v, want %v", args, c.tpmRevokeSign, want)
		}
	}
	check(nil, false)
	f := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(f, []byte(`{"tpm_revocation_roles": "all"}`), 0o600)
	check([]string{"--config", f}, true)
	check([]string{"--config", f, "--tpm-revocation-roles", "hpke"}, false)
}
