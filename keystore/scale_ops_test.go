package keystore_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// TestSignAndWelcomeScale times, on a SoftHSM token, what a SignWithLabel
// and an OpenWelcome request do below the server (catalog read, content
// check, token signature; Welcome parse, catalog look-up by
// KeyPackageRef, HPKE with the token's init key), 2,000 of each, first
// with the real keys among 100 synthetic records, then among
// MLSKEYD_SCALE_KEYS of them, and logs the medians. Same store, same
// keys: only the catalog's size changes. Opt-in (set MLSKEYD_SCALE_KEYS);
// it checks results, never times (docs/performance.md).
func TestSignAndWelcomeScale(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("MLSKEYD_SCALE_KEYS"))
	if err != nil || n < 1000 {
		t.Skip("set MLSKEYD_SCALE_KEYS=1000000 to run")
	}
	ctx := context.Background()
	env := newSoftHSMStore(t, keystore.Options{})
	s := env.store
	su, _ := mls.LookupSuite(1)
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
	content := bench.FramedContentTBS(su)

	const calls = 2000
	p50 := func(fn func()) time.Duration {
		d := make([]time.Duration, calls)
		for i := range d {
			start := time.Now()
			fn()
			d[i] = time.Since(start)
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	measure := func(keys int) (sign, open, get time.Duration) {
		sign = p50(func() {
			r, err := s.Get(sig.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := mlsops.CheckContent(r, mls.LabelFramedContentTBS, content); err != nil {
				t.Fatal(err)
			}
			if _, err := mlsops.SignWithLabel(ctx, s, r, mls.LabelFramedContentTBS, content); err != nil {
				t.Fatal(err)
			}
		})
		open = p50(func() {
			m, err := mls.UnmarshalMLSMessage(welcome)
			if err != nil {
				t.Fatal(err)
			}
			rec, entry, err := mlsops.FindEntry(s, m.Welcome, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := mlsops.OpenWelcome(ctx, s, su, m.Welcome, entry, rec); err != nil {
				t.Fatal(err)
			}
		})
		get = p50(func() {
			if _, err := s.Get(sig.ID); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("%9d keys: SignWithLabel p50 %6.1f µs, OpenWelcome (last resort) p50 %6.1f µs, Get p50 %5.1f µs (%d calls each)",
			keys, us(sign), us(open), us(get), calls)
		return
	}
	keystore.FillCatalog(t, s, 100)
	s0, o0, g0 := measure(100)
	start := time.Now()
	keystore.FillCatalog(t, s, n)
	t.Logf("%d more synthetic records written in %v", n, time.Since(start).Round(time.Second))
	s1, o1, g1 := measure(n + 100)
	t.Logf("at %d keys / at 100: SignWithLabel %.2f×, OpenWelcome %.2f×, Get %.2f×", n+100,
		float64(s1)/float64(s0), float64(o1)/float64(o0), float64(g1)/float64(g0))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
