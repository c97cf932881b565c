package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// TestInitKeyProtectionFromConfig: a level for every suite, per suite in
// a config file's object, and a flag overriding the file.
func TestInitKeyProtectionFromConfig(t *testing.T) {
	m, err := initKeyProtection("wrapped, 1=hardware")
	if err != nil || m[keystore.ECDHP256] != keystore.ProtectionWrapped || m[keystore.X25519] != keystore.ProtectionHardware || m[keystore.X448] != keystore.ProtectionWrapped {
		t.Errorf("wrapped,1=hardware: %v %v", m, err)
	}
	f := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(f, []byte(`{"init_key_protection": {"2": "wrapped", "1": "sealed"}}`), 0o600)
	s := newSettings()
	if err := s.parse([]string{"--config", f}, env(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	m, err = initKeyProtection(s.str("init-key-protection"))
	if err != nil || len(m) != 2 || m[keystore.ECDHP256] != keystore.ProtectionWrapped || m[keystore.X25519] != keystore.ProtectionSealed {
		t.Errorf("config object: %q: %v %v", s.str("init-key-protection"), m, err)
	}
}

// TestWrappedRefusedAtStartUp: --init-key-protection wrapped on SoftHSM
// 2.6.1, which cannot wrap X25519 keys, stops the start with one line.
func TestWrappedRefusedAtStartUp(t *testing.T) {
	if pkcs11.FindSoftHSM() == "" {
		t.Skip("SoftHSM 2 not installed")
	}
	state := t.TempDir()
	code, _, stderr := runMain(t, nil, "--dev", "--state-dir", state, "--init-key-protection", "wrapped")
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	if code != 1 || !strings.HasPrefix(last, "mlskeyd: ") {
		t.Fatalf("exit %d, stderr %q; want 1 and one 'mlskeyd: ' line", code, stderr)
	}
	stderr = last
	if strings.Contains(stderr, "x25519") {
		for _, w := range []string{"init-key protection wrapped for x25519 is impossible", "use hardware or sealed"} {
			if !strings.Contains(stderr, w) {
				t.Errorf("%q does not say %q", stderr, w)
			}
		}
	} else {
		t.Skipf("this SoftHSM wraps every algorithm: %q", stderr)
	}
}
