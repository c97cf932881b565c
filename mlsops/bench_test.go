package mlsops_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// Benchmarks of the hot paths in-process on SoftHSM: what `mlskeyd bench`
// measures, as testing.B figures (go test -run '^$' -bench . ./mlsops/).

func softhsmStore(b *testing.B) *keystore.Store {
	s, _ := newSoftHSMStore(b, "bench")
	return s
}

// newSoftHSMStore makes a SoftHSM token in a temporary directory, opens
// the device and a catalog on it, and returns the store and the directory
// (where SoftHSM keeps one file per token object). Both close at cleanup.
func newSoftHSMStore(tb testing.TB, label string) (*keystore.Store, string) {
	tb.Helper()
	if pkcs11.FindSoftHSM() == "" {
		tb.Skip("SoftHSM 2 not installed")
	}
	dir := tb.TempDir()
	h, err := pkcs11.InitSoftHSM(dir, label)
	if err != nil {
		tb.Fatal(err)
	}
	pin := pkcs11.RandomPIN()
	if err := h.InitToken(pkcs11.RandomPIN(), pin); err != nil {
		tb.Fatal(err)
	}
	be, err := pkcs11.Open(context.Background(), h.Config(pin))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { be.Close() })
	s, err := keystore.Open(context.Background(), filepath.Join(dir, "catalog.db"), be, keystore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, dir
}

func kpParams(su *mls.Suite, n int, lastResort bool, sig *keystore.Record) mlsops.KeyPackageParams {
	return mlsops.KeyPackageParams{Suite: su, Count: n, Owner: "bench", SignatureKey: sig, LastResort: lastResort,
		Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte("bench")},
		Lifetime:   mlsops.LifetimeFrom(time.Now(), time.Hour)}
}

// BenchmarkSignWithLabel: catalog read, strict content check and a
// signature on the token, as the daemon's handler does after the caller
// checks.
func BenchmarkSignWithLabel(b *testing.B) {
	s := softhsmStore(b)
	ctx := context.Background()
	for _, id := range []mls.CipherSuite{1, 2} {
		su, _ := mls.LookupSuite(id)
		sig, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: uint16(id), Algorithm: keystore.Algorithm(su.SignatureAlgorithm)})
		if err != nil {
			b.Fatal(err)
		}
		content := bench.FramedContentTBS(su)
		b.Run(su.SignatureAlgorithm, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := s.Get(sig.ID)
				if err != nil {
					b.Fatal(err)
				}
				if err := mlsops.CheckContent(r, mls.LabelFramedContentTBS, content); err != nil {
					b.Fatal(err)
				}
				if _, err := mlsops.SignWithLabel(ctx, s, r, mls.LabelFramedContentTBS, content); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenWelcome opens a Welcome to a last-resort KeyPackage (so
// nothing is consumed): HPKE with the init key on the token, GroupInfo
// decryption.
func BenchmarkOpenWelcome(b *testing.B) {
	s := softhsmStore(b)
	ctx := context.Background()
	for _, id := range []mls.CipherSuite{1, 2} {
		su, _ := mls.LookupSuite(id)
		res, err := mlsops.CreateKeyPackages(ctx, s, kpParams(su, 1, true, nil))
		if err != nil {
			b.Fatal(err)
		}
		kp := res.KeyPackages[0]
		msg, err := bench.Welcome(su, kp.Ref, kp.InitKey.PublicKey)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(su.KEMAlgorithm, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, err := mls.UnmarshalMLSMessage(msg)
				if err != nil {
					b.Fatal(err)
				}
				rec, entry, err := mlsops.FindEntry(s, m.Welcome, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := mlsops.OpenWelcome(ctx, s, su, m.Welcome, entry, rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCreateKeyPackages reports KeyPackages/s for batches of 20 with
// an existing signature key: two token keys, one signature and a share of
// one catalog commit per KeyPackage.
func BenchmarkCreateKeyPackages(b *testing.B) {
	s := softhsmStore(b)
	ctx := context.Background()
	// Suite 1's X25519 keys are token objects on SoftHSM 2.6.1; suite 2's
	// P-256 ones are wrapped.
	for _, id := range []mls.CipherSuite{1, 2} {
		su, _ := mls.LookupSuite(id)
		sig, err := s.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: uint16(id), Algorithm: keystore.Algorithm(su.SignatureAlgorithm)})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(su.KEMAlgorithm, func(b *testing.B) {
			n := 20
			if id == 2 {
				n = 100
			}
			start := time.Now()
			for b.Loop() {
				if _, err := mlsops.CreateKeyPackages(ctx, s, kpParams(su, n, false, sig)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "keypackages/s")
		})
	}
}
