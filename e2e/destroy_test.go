package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tokenMatchesCatalog opens a stopped daemon's token and catalog and fails
// the test unless they hold the same keys without any repair: the token
// holds exactly the catalog's active keys. It returns how many.
func tokenMatchesCatalog(t *testing.T, state string) int {
	t.Helper()
	hsm, err := pkcs11.InitSoftHSM(filepath.Join(state, "softhsm"), "mlskeyd-dev")
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := os.ReadFile(filepath.Join(state, "pin"))
	be, err := pkcs11.Open(context.Background(), hsm.Config(strings.TrimSpace(string(pin))))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dev, err := be.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cb := &countingBackend{Backend: be}
	st, err := keystore.Open(context.Background(), filepath.Join(state, "catalog.db"), cb, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if cb.destroyed != 0 {
		t.Errorf("the token held %d keys the catalog does not hold active; start-up had to destroy them", cb.destroyed)
	}
	active, _, err := st.List(keystore.Filter{State: keystore.StateActive}, "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	if len(dev) != len(active) {
		t.Errorf("token holds %d keys, catalog %d active", len(dev), len(active))
	}
	return len(active)
}

// TestShutdownAbortsBatch sends SIGTERM while a large CreateKeyPackages
// call is generating keys: the batch is aborted and its device keys are
// destroyed before the device closes, the caller is told UNAVAILABLE,
// every call is in the audit log, and the daemon exits 0 with nothing
// left for the next start. It removes its socket and never logged its PIN.
func TestShutdownAbortsBatch(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	c := d.client()
	createKPs(t, c, 1, 2)
	base := deviceKeyFiles(t, state)
	done := make(chan error, 1)
	go func() {
		_, err := c.CreateKeyPackages(context.Background(), &pb.CreateKeyPackagesRequest{
			CipherSuite: 1, Count: 1000,
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("carol")}},
		})
		done <- err
	}()
	for deviceKeyFiles(t, state) < base+10 {
		select {
		case err := <-done:
			t.Fatalf("CreateKeyPackages ended before the test could interrupt it: %v", err)
		default:
		}
	}
	made := deviceKeyFiles(t, state) - base
	sent := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	err := <-done
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != "daemon shutting down; batch aborted, nothing was created" {
		t.Fatalf("CreateKeyPackages across SIGTERM: %v", err)
	}
	if err := <-d.exited; err != nil {
		t.Fatalf("daemon exit: %v\n%s", err, d.log)
	}
	t.Logf("SIGTERM with at least %d token objects of the batch made; daemon exited %v later", made, time.Since(sent).Round(time.Millisecond))
	d.exited <- nil
	log := d.log.String()
	for _, bad := range []string{"could not destroy", "audit record lost", "did not finish"} {
		if strings.Contains(log, bad) {
			t.Errorf("daemon log says %q:\n%s", bad, log)
		}
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left: %v", err)
	}
	pin, _ := os.ReadFile(filepath.Join(state, "pin"))
	if p := strings.TrimSpace(string(pin)); p == "" || strings.Contains(log, p) {
		t.Fatal("the PIN is empty or was logged")
	}

	recs := readAudit(t, filepath.Join(state, "audit.log"))
	last := recs[len(recs)-1]
	if last.Operation != "CreateKeyPackages" || last.Code != "Unavailable" || last.Reason != "daemon shutting down; batch aborted, nothing was created" {
		t.Fatalf("last audit record: %+v", last)
	}
	if n := tokenMatchesCatalog(t, state); n != 5 {
		t.Fatalf("%d active keys, want the 5 of the first call", n)
	}
}

// TestDeleteKeyCascade: a signature key with unused KeyPackages is not
// deleted without --cascade; with it, their init and leaf keys go too, and
// a Welcome to one of them is told the key was deleted.
func TestDeleteKeyCascade(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "dave", "--count", "2")
	sig := kps[0].SignatureKeyID
	welcome := filepath.Join(t.TempDir(), "welcome")
	os.WriteFile(welcome, welcomeFor(t, mustHex(t, kps[1].KeyPackage)), 0o600)

	_, errOut, code := d.ctl("key", "delete", sig)
	if code != 1 || !strings.Contains(errOut, "2 unused KeyPackages use this key; delete them first or pass cascade") {
		t.Fatalf("key delete without --cascade: exit %d %q", code, errOut)
	}
	var k keyJSON
	d.ctlJSON(t, &k, "key", "show", sig)
	if k.State != "active" {
		t.Fatalf("refused delete left the key %s", k.State)
	}

	d.ctlJSON(t, &k, "key", "delete", sig, "--cascade")
	if k.State != "destroyed" {
		t.Fatalf("key delete --cascade: %+v", k)
	}
	for _, kp := range kps {
		for _, id := range []string{kp.InitKeyID, kp.LeafEncryptionKeyID} {
			d.ctlJSON(t, &k, "key", "show", id)
			if k.State != "destroyed" {
				t.Errorf("key %s of the KeyPackage is %s", id, k.State)
			}
		}
	}
	_, errOut, code = d.ctl("welcome", "open", "--in", welcome)
	if code != 1 || !strings.Contains(errOut, "was deleted") {
		t.Fatalf("Welcome to a deleted KeyPackage: exit %d %q", code, errOut)
	}

	// The audit record of the delete names every key it destroyed.
	var del *struct{ ids []string }
	for _, r := range readAudit(t, filepath.Join(state, "audit.log")) {
		if r.Operation == "DeleteKey" && r.Code == "OK" {
			del = &struct{ ids []string }{append([]string{r.KeyID}, r.KeyIDs...)}
		}
	}
	if del == nil || len(del.ids) != 5 || del.ids[0] != sig {
		t.Fatalf("DeleteKey audit record: %+v", del)
	}
	d.stop()
	if n := tokenMatchesCatalog(t, state); n != 0 {
		t.Fatalf("%d keys still active", n)
	}
}
