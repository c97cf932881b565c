package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/audit"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bindingStatus is the binding part of 'mlskeyctl status --json'.
type bindingStatus struct {
	Installation  string   `json:"installation_id"`
	MissingKeys   int      `json:"missing_keys"`
	StrayKeys     int      `json:"stray_keys"`
	MissingKeyIDs []string `json:"missing_key_ids"`
	StrayKeyIDs   []string `json:"stray_key_ids"`
}

func (d *daemon) binding(t *testing.T) bindingStatus {
	t.Helper()
	var st bindingStatus
	d.ctlJSON(t, &st, "status")
	return st
}

// populate makes signature keys of three suites and KeyPackages, and
// returns how many keys the catalog then holds.
func populate(t *testing.T, d *daemon) int {
	t.Helper()
	c := d.client()
	for _, suite := range []uint32{1, 2, 3} {
		if _, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: suite}); err != nil {
			t.Fatal(err)
		}
	}
	createKPs(t, c, 1, 3) // a signature key and 3 × (init, leaf encryption)
	return 3 + 1 + 6
}

// checkEveryKeyWorks lists the keys: all n must be active, and every
// signature key must sign (verified independently).
func checkEveryKeyWorks(t *testing.T, d *daemon, n int) {
	t.Helper()
	keys := d.listKeys(t)
	if len(keys) != n {
		t.Fatalf("%d keys, want %d", len(keys), n)
	}
	c := d.client()
	signed := 0
	for _, k := range keys {
		if k.State != "active" {
			t.Errorf("key %s is %s", k.ID, k.State)
			continue
		}
		if k.Role != "signature" {
			continue
		}
		pub, _ := hex.DecodeString(k.PublicKey)
		content := tbs(t, "FramedContentTBS", k.Suite, pub, "after restart")
		r, err := c.SignWithLabel(context.Background(), &pb.SignWithLabelRequest{KeyId: k.ID, Label: "FramedContentTBS", Content: content})
		if err != nil {
			t.Fatalf("sign with %s: %v", k.ID, err)
		}
		verifyStd(t, k.Suite, pub, "FramedContentTBS", content, r.Signature)
		signed++
	}
	if signed != 4 {
		t.Errorf("signed with %d keys, want 4", signed)
	}
	if st := d.binding(t); st.MissingKeys != 0 || st.StrayKeys != 0 {
		t.Errorf("quarantine after a normal restart: %+v", st)
	}
}

// refusal returns the line mlskeyd reports its start-up error on.
func refusal(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "mlskeyd: ") {
			t.Log(l)
			return l
		}
	}
	t.Fatalf("no error line in\n%s", out)
	return ""
}

func auditOps(t *testing.T, path string) map[string][]audit.Record {
	t.Helper()
	out := map[string][]audit.Record{}
	for _, r := range readAudit(t, path) {
		out[r.Operation] = append(out[r.Operation], r)
	}
	return out
}

// TestOtherCatalogOnSameTokenRefused: another --catalog on a token bound to
// an installation refuses to start and destroys nothing; adoption takes the
// token's keys over only as strays, which only an admin's repair destroys.
func TestOtherCatalogOnSameTokenRefused(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	n := populate(t, d)
	inst := d.binding(t).Installation
	if len(inst) != 32 {
		t.Fatalf("installation id %q", inst)
	}
	objects := deviceKeyFiles(t, state)
	d.stop()

	other := filepath.Join(t.TempDir(), "other.db")
	line := refusal(t, startDaemonExpectFailure(t, state, "--catalog", other))
	for _, want := range []string{"refusing to start", "installation none", "installation " + inst, "--catalog", "--adopt-device"} {
		if !strings.Contains(line, want) {
			t.Errorf("refusal %q lacks %q", line, want)
		}
	}
	if got := deviceKeyFiles(t, state); got != objects {
		t.Fatalf("token objects %d after the refused start, want %d", got, objects)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("the refused start left a catalog at %s: %v", other, err)
	}
	ops := auditOps(t, filepath.Join(state, "audit.log"))
	if len(ops["KeystoreRefused"]) != 1 || len(ops["KeystoreDestroyed"]) != 0 {
		t.Errorf("audit log: %d refusals, %d destructions", len(ops["KeystoreRefused"]), len(ops["KeystoreDestroyed"]))
	}

	d = startDaemon(t, state)
	checkEveryKeyWorks(t, d, n)
	d.stop()

	// Adoption: the new catalog takes the installation; the token's keys
	// are strays, left in place. Only an admin may destroy them.
	d = startDaemon(t, state, "--catalog", other, "--adopt-device")
	st := d.binding(t)
	if st.Installation != inst || st.StrayKeys != n || len(st.StrayKeyIDs) != 0 {
		t.Fatalf("adopted status (not an admin): %+v", st)
	}
	if _, errOut, code := d.ctl("repair", "--destroy-strays"); code == 0 || !strings.Contains(errOut, fmt.Sprintf("only admins may repair the catalog and the device; uid %d is not one (the daemon's --admin-uids or --admin-gids)\n", os.Getuid())) {
		t.Fatalf("repair by a non-admin: exit %d %s", code, errOut)
	}
	// Nothing is destroyed; the adopting catalog has no sealing epoch yet
	// and starts one, whose epoch key is the one object added.
	if got := deviceKeyFiles(t, state); got != objects+1 {
		t.Fatalf("token objects %d after adoption, want %d (the %d before and the new epoch key)", got, objects+1, objects)
	}
	d.stop()
	d = startDaemon(t, state, "--catalog", other, "--admin-uids", fmt.Sprint(os.Getuid()))
	if st := d.binding(t); len(st.StrayKeyIDs) != n {
		t.Fatalf("admin status: %+v", st)
	}
	var rep struct {
		DestroyedStrays []string `json:"destroyed_strays"`
		StrayKeyIDs     []string `json:"stray_key_ids"`
	}
	d.ctlJSON(t, &rep, "repair", "--destroy-strays")
	if len(rep.DestroyedStrays) != n || len(rep.StrayKeyIDs) != 0 {
		t.Fatalf("repair: %+v", rep)
	}
	d.stop()
	ops = auditOps(t, filepath.Join(state, "audit.log"))
	if len(ops["KeystoreAdopted"]) != 1 || len(ops["KeystoreQuarantined"]) == 0 || len(ops["Repair"]) != 2 {
		t.Errorf("audit log: %d adoptions, %d quarantines, %d repairs", len(ops["KeystoreAdopted"]), len(ops["KeystoreQuarantined"]), len(ops["Repair"]))
	}
	if ds := ops["KeystoreDestroyed"]; len(ds) != 1 || 1+len(ds[0].KeyIDs) != n {
		t.Errorf("audit of the repair's destruction: %+v", ds)
	}

	// The first catalog now finds its keys missing: quarantined, not
	// retired, and listed.
	d = startDaemon(t, state)
	if st := d.binding(t); st.MissingKeys != n {
		t.Fatalf("status after the strays were destroyed: %+v", st)
	}
	var missing []keyJSON
	d.ctlJSON(t, &missing, "key", "list", "--state", "missing")
	if len(missing) != n {
		t.Fatalf("%d keys listed missing, want %d", len(missing), n)
	}
	_, err := d.client().SignWithLabel(context.Background(), &pb.SignWithLabelRequest{KeyId: missing[0].ID, Label: "FramedContentTBS", Content: []byte("x")})
	if status.Code(err) != codes.FailedPrecondition && status.Code(err) != codes.InvalidArgument {
		t.Fatalf("sign with a missing key: %v", err)
	}
}

// TestCatalogOnOtherTokenRefused: a catalog started on another token (a
// fresh one, or one of another installation) refuses, marks nothing, and
// the right token afterwards serves every key.
func TestCatalogOnOtherTokenRefused(t *testing.T) {
	sa, sb := t.TempDir(), t.TempDir()
	d := startDaemon(t, sa)
	n := populate(t, d)
	instA := d.binding(t).Installation
	d.stop()
	catA := filepath.Join(sa, "catalog.db")

	// A fresh token: no installation marker.
	line := refusal(t, startDaemonExpectFailure(t, sb, "--catalog", catA))
	for _, want := range []string{"refusing to start", "installation " + instA, "installation none", "no installation marker"} {
		if !strings.Contains(line, want) {
			t.Errorf("refusal on a fresh token %q lacks %q", line, want)
		}
	}

	// A token of another installation: refused even with adoption.
	d = startDaemon(t, sb)
	instB := d.binding(t).Installation
	d.stop()
	for _, extra := range [][]string{nil, {"--adopt-device"}} {
		line = refusal(t, startDaemonExpectFailure(t, sb, append([]string{"--catalog", catA}, extra...)...))
		for _, want := range []string{"installation " + instA, "installation " + instB, "different installations"} {
			if !strings.Contains(line, want) {
				t.Errorf("refusal on another installation's token %v %q lacks %q", extra, line, want)
			}
		}
	}
	if ops := auditOps(t, filepath.Join(sb, "audit.log")); len(ops["KeystoreRefused"]) != 3 {
		t.Errorf("audit log of the other token: %d refusals, want 3", len(ops["KeystoreRefused"]))
	}

	d = startDaemon(t, sa)
	checkEveryKeyWorks(t, d, n)
}
