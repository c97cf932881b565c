package mlsops_test

import (
	"context"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// TestWrappedKeyPackagesConstantObjects: 1,000 KeyPackages of suite 2
// (P-256, wrapped init and leaf keys) leave the token's object count as it
// was. SoftHSM keeps one file per token object, so the files are counted.
func TestWrappedKeyPackagesConstantObjects(t *testing.T) {
	store, dir := newSoftHSMStore(t, "wrapped")
	ctx := context.Background()
	su, _ := mls.LookupSuite(2)
	create := func(sig *keystore.Record, n int) *mlsops.KeyPackageResult {
		res, err := mlsops.CreateKeyPackages(ctx, store, mlsops.KeyPackageParams{
			Suite: su, Count: n, Owner: "wrapped", SignatureKey: sig,
			Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte("wrapped")},
			Lifetime:   mlsops.LifetimeFrom(time.Now(), time.Hour),
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// The first KeyPackage makes the signature key and the epoch's
	// wrapping key.
	sig := create(nil, 1).SignatureKey
	before := tokenObjects(t, dir)
	for range 10 {
		res := create(sig, 100)
		if r := res.KeyPackages[0].InitKey; r.Protection != keystore.ProtectionWrapped {
			t.Fatalf("init key protection %s, want wrapped", r.Protection)
		}
	}
	if after := tokenObjects(t, dir); after != before {
		t.Errorf("token objects: %d before 1,000 KeyPackages, %d after; want equal", before, after)
	}
	counts, err := store.UnusedKeyPackages("wrapped", 2)
	if err != nil || len(counts) != 1 || counts[0].Regular != 1001 {
		t.Fatalf("unused KeyPackages: %+v, %v; want 1001", counts, err)
	}
}

func tokenObjects(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".object") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
