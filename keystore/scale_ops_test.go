package keystore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// TestSignAndWelcomeScale times, on SoftHSM, what a SignWithLabel and an
// OpenWelcome request do below the server (catalog read, content check,
// token signature; Welcome parse, catalog look-up by KeyPackageRef, HPKE
// with the token's init key), 2,000 of each, with the keys among 100
// synthetic records and among MLSKEYD_SCALE_KEYS of them, and logs the
// medians. Two stores on two tokens of one SoftHSM, measured in
// alternating rounds, so that the load of a shared machine falls on both
// alike. Opt-in (set MLSKEYD_SCALE_KEYS); it checks results, never times
// (docs/performance.md).
func TestSignAndWelcomeScale(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("MLSKEYD_SCALE_KEYS"))
	if err != nil || n < 1000 {
		t.Skip("set MLSKEYD_SCALE_KEYS=1000000 to run")
	}
	if pkcs11.FindSoftHSM() == "" {
		t.Skip("SoftHSM 2 not installed")
	}
	ctx := context.Background()
	su, _ := mls.LookupSuite(1)
	content := bench.FramedContentTBS(su)
	dir := t.TempDir()
	type side struct {
		keys      int
		s         *keystore.Store
		sig       *keystore.Record
		welcome   []byte
		sign, opn []time.Duration
	}
	var sides []*side
	for i, keys := range []int{100, n} {
		be := newSoftHSMToken(t, dir, fmt.Sprintf("scale-%d", i))
		s, err := keystore.Open(ctx, filepath.Join(dir, fmt.Sprintf("catalog-%d.db", i)), be, keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		sig, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: 1, Algorithm: keystore.Ed25519, Owner: "scale"})
		if err != nil {
			t.Fatal(err)
		}
		res, err := mlsops.CreateKeyPackages(ctx, s, mlsops.KeyPackageParams{
			Suite: su, Count: 1, Owner: "scale", SignatureKey: sig, LastResort: true,
			Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte("scale")},
			Lifetime:   mlsops.LifetimeFrom(time.Now(), time.Hour),
		})
		if err != nil {
			t.Fatal(err)
		}
		kp := res.KeyPackages[0]
		welcome, err := bench.Welcome(su, kp.Ref, kp.InitKey.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		keystore.FillCatalog(t, s, keys)
		t.Logf("%d synthetic records written in %v", keys, time.Since(start).Round(time.Millisecond))
		sides = append(sides, &side{keys: keys, s: s, sig: sig, welcome: welcome})
	}
	timed := func(out *[]time.Duration, fn func()) {
		for range 200 {
			start := time.Now()
			fn()
			*out = append(*out, time.Since(start))
		}
	}
	for range 10 {
		for _, sd := range sides {
			timed(&sd.sign, func() {
				r, err := sd.s.Get(sd.sig.ID)
				if err != nil {
					t.Fatal(err)
				}
				if err := mlsops.CheckContent(r, mls.LabelFramedContentTBS, content); err != nil {
					t.Fatal(err)
				}
				if _, err := mlsops.SignWithLabel(ctx, sd.s, r, mls.LabelFramedContentTBS, content); err != nil {
					t.Fatal(err)
				}
			})
			timed(&sd.opn, func() {
				m, err := mls.UnmarshalMLSMessage(sd.welcome)
				if err != nil {
					t.Fatal(err)
				}
				rec, entry, err := mlsops.FindEntry(sd.s, m.Welcome, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := mlsops.OpenWelcome(ctx, sd.s, su, m.Welcome, entry, rec); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	p50 := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	for _, sd := range sides {
		t.Logf("%9d synthetic keys: SignWithLabel p50 %6.1f µs, OpenWelcome (last resort) p50 %6.1f µs (%d calls each)",
			sd.keys, us(p50(sd.sign)), us(p50(sd.opn)), len(sd.sign))
	}
	a, b := sides[0], sides[1]
	t.Logf("at %d keys / at %d: SignWithLabel %.2f×, OpenWelcome %.2f×", b.keys, a.keys,
		float64(p50(b.sign))/float64(p50(a.sign)), float64(p50(b.opn))/float64(p50(a.opn)))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
