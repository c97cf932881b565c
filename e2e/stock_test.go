package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// TestKeyPackageStock: 'keypackage ensure' creates only what brings the
// unused stock back to the target once it fell to the minimum, and
// 'keypackage list' shows each KeyPackage's state and the unused count.
func TestKeyPackageStock(t *testing.T) {
	d := sharedDaemon(t)
	defer d.stop()
	type created struct {
		Ref    string `json:"key_package_ref"`
		InitID string `json:"init_key_id"`
	}
	ensure := func(wantBefore string) []created {
		t.Helper()
		out, errOut, code := d.ctl("--json", "keypackage", "ensure", "--suite", "2", "--identity", "alice", "--target", "6", "--min", "2")
		if code != 0 {
			t.Fatalf("ensure: exit %d: %s", code, errOut)
		}
		if !strings.HasPrefix(errOut, wantBefore+" unused KeyPackages before") {
			t.Fatalf("ensure said %q, want %s unused before", errOut, wantBefore)
		}
		var kps []created
		if err := json.Unmarshal([]byte(out), &kps); err != nil {
			t.Fatalf("ensure --json: %v: %q", err, out)
		}
		return kps
	}
	first := ensure("0")
	if len(first) != 6 {
		t.Fatalf("first ensure created %d, want 6", len(first))
	}
	if again := ensure("6"); len(again) != 0 {
		t.Fatalf("ensure with a full stock created %d", len(again))
	}
	c := d.client()
	su, _ := mls.LookupSuite(2)
	for _, kp := range first[:4] {
		init, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.InitID})
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := hex.DecodeString(kp.Ref)
		w, err := bench.Welcome(su, ref, init.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.OpenWelcome(context.Background(), &pb.OpenWelcomeRequest{Welcome: w}); err != nil {
			t.Fatal(err)
		}
	}
	if refill := ensure("2"); len(refill) != 4 {
		t.Fatalf("refill created %d, want 4", len(refill))
	}

	var list struct {
		KeyPackages []struct {
			Ref      string `json:"key_package_ref"`
			State    string `json:"state"`
			Identity string `json:"identity"`
			NotAfter string `json:"not_after"`
		} `json:"key_packages"`
		Unused []struct {
			Suite    uint32 `json:"suite"`
			Identity string `json:"identity"`
			Unused   uint32 `json:"unused"`
		} `json:"unused"`
	}
	d.ctlJSON(t, &list, "keypackage", "list")
	states := map[string]int{}
	for _, k := range list.KeyPackages {
		states[k.State]++
		if k.Identity != "alice" || k.NotAfter == "" {
			t.Fatalf("listed %+v", k)
		}
	}
	if len(list.KeyPackages) != 10 || states["consumed"] != 4 || states["unused"] != 6 {
		t.Fatalf("list: %d KeyPackages, states %v; want 4 consumed and 6 unused", len(list.KeyPackages), states)
	}
	if len(list.Unused) != 1 || list.Unused[0].Unused != 6 || list.Unused[0].Identity != "alice" || list.Unused[0].Suite != 2 {
		t.Fatalf("unused counts: %+v", list.Unused)
	}
	d.ctlJSON(t, &list, "keypackage", "list", "--unused")
	if len(list.KeyPackages) != 6 {
		t.Fatalf("list --unused: %d, want 6", len(list.KeyPackages))
	}
	// keypackage delete: an unused one goes, with its keys; a consumed one
	// is refused; another owner's is not found.
	unusedRef := ""
	for _, k := range list.KeyPackages {
		unusedRef = k.Ref
	}
	if _, errOut, code := d.ctl("keypackage", "delete", unusedRef); code != 0 {
		t.Fatalf("keypackage delete: exit %d: %s", code, errOut)
	}
	d.ctlJSON(t, &list, "keypackage", "list", "--unused")
	if len(list.KeyPackages) != 5 || list.Unused[0].Unused != 5 {
		t.Fatalf("after delete: %d unused listed, count %+v", len(list.KeyPackages), list.Unused)
	}
	if _, errOut, code := d.ctl("keypackage", "delete", first[0].Ref); code != 1 || !strings.Contains(errOut, "consumed") {
		t.Fatalf("deleting a consumed KeyPackage: exit %d: %s", code, errOut)
	}
	if _, errOut, code := d.ctlAs(65534, "keypackage", "delete", list.KeyPackages[0].Ref); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("another user deleting the KeyPackage: exit %d: %s", code, errOut)
	}
	if _, errOut, code := d.ctl("keypackage", "ensure", "--suite", "2", "--identity", "alice", "--target", "4", "--min", "4"); code != 2 {
		t.Fatalf("--min not below --target: exit %d %s", code, errOut)
	}
}
