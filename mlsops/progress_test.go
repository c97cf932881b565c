package mlsops_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// TestKeyPackageProgress: a batch reports 0 first, then growing counts
// that end at total (two key generations per KeyPackage, one for the new
// signature key, one signature per KeyPackage), never from two goroutines
// at once.
func TestKeyPackageProgress(t *testing.T) {
	store, _ := newSoftHSMStore(t, "progress")
	su, _ := mls.LookupSuite(1)
	const n = 40
	var (
		seen []int
		busy atomic.Bool
	)
	p := kpParams(su, n, false, nil)
	p.Progress = func(done, total int) {
		if !busy.CompareAndSwap(false, true) {
			t.Error("Progress called concurrently")
		}
		defer busy.Store(false)
		if total != 3*n+1 {
			t.Errorf("total %d, want %d", total, 3*n+1)
		}
		seen = append(seen, done)
	}
	res, err := mlsops.CreateKeyPackages(context.Background(), store, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.KeyPackages) != n {
		t.Fatalf("%d KeyPackages", len(res.KeyPackages))
	}
	if len(seen) < 2 || seen[0] != 0 || seen[len(seen)-1] != 3*n+1 {
		t.Fatalf("progress %v: want 0 first and %d last", seen, 3*n+1)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("progress %v does not grow", seen)
		}
	}
}

// TestKeyPackageCancelAfterProgress: a caller that gives up as soon as it
// hears the batch is done (its last progress report comes before the
// commit) or under way finds no key in the catalog and no new object on
// the token.
func TestKeyPackageCancelAfterProgress(t *testing.T) {
	store, dir := newSoftHSMStore(t, "progresscancel")
	su, _ := mls.LookupSuite(1)
	for _, at := range []string{"first", "last"} {
		t.Run(at, func(t *testing.T) {
			unchanged := snapshot(t, store, dir)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p := kpParams(su, 20, false, nil)
			p.Progress = func(done, total int) {
				if (at == "first" && done > 0) || done == total {
					cancel()
				}
			}
			_, err := mlsops.CreateKeyPackages(ctx, store, p)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want context.Canceled", err)
			}
			unchanged("a cancelled batch")
		})
	}
}

// TestKeyPackagePanicInWorker: a panic on a signing worker goroutine (here
// in the last progress report, which a signing worker always makes) fails
// the batch with keystore.ErrInternal instead of ending the process,
// commits nothing, leaves no token object behind, and the next batch
// works. A panic in a key generation worker: keystore's
// TestWorkerPanicFailsTheBatchNotTheDaemon.
func TestKeyPackagePanicInWorker(t *testing.T) {
	store, dir := newSoftHSMStore(t, "progresspanic")
	su, _ := mls.LookupSuite(1)
	unchanged := snapshot(t, store, dir)
	p := kpParams(su, 20, false, nil)
	p.Progress = func(done, total int) {
		if done == total {
			panic("progress report failed")
		}
	}
	_, err := mlsops.CreateKeyPackages(context.Background(), store, p)
	if !errors.Is(err, keystore.ErrInternal) {
		t.Fatalf("got %v, want keystore.ErrInternal", err)
	}
	unchanged("a failed batch")
	if _, err := mlsops.CreateKeyPackages(context.Background(), store, kpParams(su, 3, false, nil)); err != nil {
		t.Fatalf("next batch: %v", err)
	}
}

// snapshot counts the catalog's keys and the token's objects now; the
// function it returns reports any change since, after what.
func snapshot(t *testing.T, store *keystore.Store, dir string) func(after string) {
	t.Helper()
	keys, _ := store.Count(keystore.Filter{}, nil)
	objects := tokenObjects(t, dir)
	return func(after string) {
		t.Helper()
		if n, _ := store.Count(keystore.Filter{}, nil); n != keys {
			t.Errorf("catalog keys: %d before, %d after %s", keys, n, after)
		}
		if n := tokenObjects(t, dir); n != objects {
			t.Errorf("token objects: %d before, %d after %s", objects, n, after)
		}
	}
}
