package e2e

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

// TestRetiredKeyNotRevived: copy the catalog, open a Welcome (its sealed
// init key is consumed), stop, put the copy back, start: the same Welcome
// must not open again, and the daemon says why. Suite 1 on the TPM is
// sealed; --seal-epoch retire destroys the epoch key before the first open
// returns.
func TestRetiredKeyNotRevived(t *testing.T) {
	sw := swtpm.Start(t, t.TempDir())
	state := t.TempDir()
	args := []string{"--backend", "tpm", "--tpm", sw.Device(), "--seal-epoch", "retire"}
	d := startDaemon(t, state, args...)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "revival@example.org", "--count", "2")
	var init keyJSON
	d.ctlJSON(t, &init, "key", "show", kps[0].InitKeyID)
	if init.Protection != "sealed" {
		t.Fatalf("suite 1 init key on the TPM is %s, want sealed", init.Protection)
	}
	file := welcomeFileFor(t, kps[0].KeyPackage, nil)

	d.stop()
	restore := backUpCatalog(t, state)
	d = startDaemon(t, state, args...)
	if out, errOut, code := d.ctl("welcome", "open", "--in", file); code != 0 {
		t.Fatalf("first open: exit %d %s %s", code, out, errOut)
	}
	d.stop()
	if a, _ := os.ReadFile(filepath.Join(state, "audit.log")); !strings.Contains(string(a), `"operation":"KeystoreEpochDestroyed"`) {
		t.Fatalf("the destroyed epoch key is not in the audit log:\n%s", a)
	}
	restore()
	d = startDaemon(t, state, args...)
	out, errOut, code := d.ctl("welcome", "open", "--in", file)
	if code == 0 {
		t.Fatalf("the consumed init key opened the Welcome again from the old catalog: %s", out)
	}
	if !strings.Contains(errOut, "failed precondition") || !strings.Contains(errOut, "epoch key is not on the device") || !strings.Contains(errOut, "retired") {
		t.Fatalf("second open fails without saying why: %s", errOut)
	}
	if !strings.Contains(d.log.String(), "whose epoch key is no longer on the device") {
		t.Fatalf("start-up with the old catalog does not warn:\n%s", d.log)
	}
	t.Logf("second open: %s", strings.TrimSpace(errOut))
}

// TestRetiredHardwareKeyNotRevived: the same with suite 2, whose init key
// the TPM computes (P-256). Opening the Welcome consumes the init key but
// not the KeyPackage's leaf encryption key, which keeps their epoch alive;
// the init key's revocation bit is what stops the old catalog. The daemon
// starts with the old copy, retires the key in it, says why in its log
// and the audit log, and the same Welcome fails as for a consumed key.
func TestRetiredHardwareKeyNotRevived(t *testing.T) {
	sw := swtpm.Start(t, t.TempDir())
	state := t.TempDir()
	args := []string{"--backend", "tpm", "--tpm", sw.Device(), "--seal-epoch", "retire"}
	d := startDaemon(t, state, args...)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "revival@example.org", "--count", "1")
	var init, leaf keyJSON
	d.ctlJSON(t, &init, "key", "show", kps[0].InitKeyID)
	d.ctlJSON(t, &leaf, "key", "show", kps[0].LeafEncryptionKeyID)
	if init.Protection != "hardware" || leaf.Protection != "hardware" {
		t.Fatalf("suite 2 keys on the TPM: init %s, leaf %s; want hardware", init.Protection, leaf.Protection)
	}
	file := welcomeFileFor(t, kps[0].KeyPackage, map[string]string{"suite": "2"})

	d.stop()
	restore := backUpCatalog(t, state)
	d = startDaemon(t, state, args...)
	if out, errOut, code := d.ctl("welcome", "open", "--in", file); code != 0 {
		t.Fatalf("first open: exit %d %s %s", code, out, errOut)
	}
	d.ctlJSON(t, &leaf, "key", "show", kps[0].LeafEncryptionKeyID)
	if leaf.State != "active" {
		t.Fatalf("leaf key after the Welcome: %s", leaf.State)
	}
	d.stop()
	restore()
	d = startDaemon(t, state, args...)
	out, errOut, code := d.ctl("welcome", "open", "--in", file)
	if code == 0 {
		t.Fatalf("the consumed init key opened the Welcome again from the old catalog: %s", out)
	}
	if !strings.Contains(errOut, "failed precondition") || !strings.Contains(errOut, "destroyed") || !strings.Contains(errOut, "older than the device") {
		t.Fatalf("second open fails without saying why: %s", errOut)
	}
	if !strings.Contains(d.log.String(), "catalog is older than the device") {
		t.Fatalf("start-up with the old catalog does not warn:\n%s", d.log)
	}
	d.stop()
	if a, _ := os.ReadFile(filepath.Join(state, "audit.log")); !strings.Contains(string(a), `"operation":"KeystoreRetired"`) || !strings.Contains(string(a), "older than the device") {
		t.Fatalf("the key retired at start-up is not in the audit log:\n%s", a)
	}
	t.Logf("second open: %s", strings.TrimSpace(errOut))
}

// TestRetiredSignatureKeyNotRevivedTPM: with --tpm-revocation-roles all, a
// deleted TPM signature key whose epoch another active signature key pins
// cannot sign from an old copy of the catalog; the other key still signs.
func TestRetiredSignatureKeyNotRevivedTPM(t *testing.T) {
	sw := swtpm.Start(t, t.TempDir())
	state := t.TempDir()
	args := []string{"--backend", "tpm", "--tpm", sw.Device(), "--tpm-revocation-roles", "all"}
	d := startDaemon(t, state, args...)
	var gone, kept keyJSON
	d.ctlJSON(t, &gone, "key", "create", "--suite", "2")
	d.ctlJSON(t, &kept, "key", "create", "--suite", "2")
	if gone.Protection != "hardware" || kept.Protection != "hardware" {
		t.Fatalf("suite 2 signature keys on the TPM: %s, %s; want hardware", gone.Protection, kept.Protection)
	}
	sign := func(k keyJSON) (string, int) {
		_, errOut, code := d.ctlIn(tbs(t, "FramedContentTBS", 2, mustHex(t, k.PublicKey), "x"), "sign", "--key", k.ID, "--label", "FramedContentTBS")
		return errOut, code
	}
	if errOut, code := sign(gone); code != 0 {
		t.Fatalf("sign before the delete: %s", errOut)
	}
	d.stop()
	restore := backUpCatalog(t, state)
	d = startDaemon(t, state, args...)
	if out, errOut, code := d.ctl("key", "delete", gone.ID); code != 0 {
		t.Fatalf("delete: exit %d %s %s", code, out, errOut)
	}
	d.stop()
	restore()
	d = startDaemon(t, state, args...)
	errOut, code := sign(gone)
	if code == 0 {
		t.Fatal("the deleted signature key signed again from the old catalog")
	}
	if !strings.Contains(errOut, "failed precondition") || !strings.Contains(errOut, "destroyed") || !strings.Contains(errOut, "older than the device") {
		t.Fatalf("sign with the deleted key: %s", errOut)
	}
	if !strings.Contains(d.log.String(), "catalog is older than the device") {
		t.Fatalf("start-up with the old catalog does not warn:\n%s", d.log)
	}
	if errOut, code := sign(kept); code != 0 {
		t.Fatalf("the other key of the epoch: %s", errOut)
	}
	t.Logf("sign with the deleted key: %s", strings.TrimSpace(errOut))
}

// welcomeFileFor has ts-mls add the KeyPackage (hex) to a new group and
// writes the Welcome to a file for `mlskeyctl welcome open --in`.
func welcomeFileFor(t *testing.T, keyPackage string, extra map[string]string) string {
	t.Helper()
	in := map[string]string{"key_package": keyPackage}
	for k, v := range extra {
		in[k] = v
	}
	var added struct{ Welcome string }
	tsmls(t, "add", in, &added)
	welcome, err := hex.DecodeString(added.Welcome)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "welcome")
	if err := os.WriteFile(file, welcome, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// backUpCatalog copies the state directory's catalog, as a backup would,
// and returns what puts the copy back.
func backUpCatalog(t *testing.T, state string) (restore func()) {
	t.Helper()
	catalog := filepath.Join(state, "catalog.db")
	saved, err := os.ReadFile(catalog)
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := os.WriteFile(catalog, saved, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
