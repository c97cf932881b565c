package mlsops_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// TestKeyPackageStockScale fills a SoftHSM token with
// MLSKEYD_SCALE_KEYPACKAGES KeyPackages (suite 1) in batches of 100 and
// logs how long each batch took, to show that the cost of a KeyPackage
// does not grow with the number already made (docs/performance.md). It
// checks correctness only; the figures are for reading, never asserted.
func TestKeyPackageStockScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MLSKEYD_SCALE_KEYPACKAGES"))
	if n <= 0 {
		t.Skip("set MLSKEYD_SCALE_KEYPACKAGES=10000 to run (about an hour on a loaded 2-core machine)")
	}
	const batch = 100
	n = (n + batch - 1) / batch * batch
	store, _ := newSoftHSMStore(t, "scale")
	ctx := context.Background()
	su, _ := mls.LookupSuite(1)
	sig, err := store.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519, Owner: "scale"})
	if err != nil {
		t.Fatal(err)
	}
	// CPU time (user and system, the token's file work included) is
	// reported beside wall time: on a shared machine it varies far less.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var took, cpus []time.Duration
	for i := 0; i < n/batch; i++ {
		start, cpu0 := time.Now(), cpu()
		_, err := mlsops.CreateKeyPackages(ctx, store, mlsops.KeyPackageParams{
			Suite: su, Count: batch, Owner: "scale", SignatureKey: sig,
			Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte("scale")},
			Lifetime:   mlsops.LifetimeFrom(time.Now(), time.Hour),
		})
		if err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
		cpus = append(cpus, cpu()-cpu0)
		t.Logf("KeyPackages %5d-%5d: %6.2f s wall (%.1f/s), %5.2f s CPU", i*batch+1, (i+1)*batch, took[i].Seconds(), batch/took[i].Seconds(), cpus[i].Seconds())
	}
	counts, err := store.UnusedKeyPackages("scale", 1)
	if err != nil || len(counts) != 1 || counts[0].Regular != n {
		t.Fatalf("unused KeyPackages: %+v, %v; want %d", counts, err, n)
	}
	median := func(d []time.Duration) time.Duration {
		d = slices.Clone(d)
		slices.Sort(d)
		return d[len(d)/2]
	}
	k := min(5, len(took))
	first, last := took[0], took[len(took)-1]
	t.Logf("first 100: %.2f s, last 100: %.2f s, last/first %.2f; median of the first %d batches %.2f s, of the last %d %.2f s, ratio %.2f",
		first.Seconds(), last.Seconds(), last.Seconds()/first.Seconds(),
		k, median(took[:k]).Seconds(), k, median(took[len(took)-k:]).Seconds(),
		median(took[len(took)-k:]).Seconds()/median(took[:k]).Seconds())
	t.Logf("CPU: first 100 %.2f s, last 100 %.2f s, last/first %.2f; median of the first %d %.2f s, of the last %d %.2f s, ratio %.2f",
		cpus[0].Seconds(), cpus[len(cpus)-1].Seconds(), cpus[len(cpus)-1].Seconds()/cpus[0].Seconds(),
		k, median(cpus[:k]).Seconds(), k, median(cpus[len(cpus)-k:]).Seconds(),
		median(cpus[len(cpus)-k:]).Seconds()/median(cpus[:k]).Seconds())
}
