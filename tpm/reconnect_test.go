package tpm

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

func waitTPMState(t *testing.T, b *Backend, want keystore.DeviceState) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
		ch := b.HealthChanged()
		if b.Health().State == want {
			return
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("TPM state %q, waited for %q: %+v", b.Health().State, want, b.Health())
}

// swtpm killed under a load of signers and sealers and started again: every
// call succeeds or fails with ErrDeviceUnavailable (the issue: "connection
// unusable after an earlier error" forever), and the Backend serves again
// with the same keys, without being reopened.
func TestSwtpmKilledAndBack(t *testing.T) {
	s := swtpm.Start(t, t.TempDir())
	b := openCfg(t, Config{Device: s.Device(), HealthInterval: 50 * time.Millisecond, RecoveryMaxBackoff: 200 * time.Millisecond})
	ctx := context.Background()
	ref, pub, err := b.Generate(ctx, "a", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := b.Seal(ctx, []byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var ok, unavailable atomic.Int64
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if w == 0 {
					var pt []byte
					pt, err = b.Unseal(ctx, sealed, []byte("aad"))
					if err == nil && string(pt) != "secret" {
						t.Error("wrong plaintext")
						return
					}
				} else {
					var sig []byte
					d := digestFor(keystore.ECDSAP256, "m")
					sig, err = b.Sign(ctx, ref, keystore.ECDSAP256, d)
					if err == nil && !verifyRaw(keystore.ECDSAP256, pub, d, sig) {
						t.Error("wrong signature")
						return
					}
				}
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, keystore.ErrDeviceUnavailable):
					unavailable.Add(1)
					time.Sleep(5 * time.Millisecond)
				default:
					t.Errorf("call failed, not with UNAVAILABLE: %v", err)
					return
				}
			}
		})
	}
	for round := range 2 {
		for before := ok.Load(); ok.Load() < before+10 && !t.Failed(); {
			time.Sleep(5 * time.Millisecond)
		}
		s.Kill()
		waitTPMState(t, b, keystore.DeviceUnavailable)
		if _, err := b.Sign(ctx, ref, keystore.ECDSAP256, digestFor(keystore.ECDSAP256, "m")); !errors.Is(err, keystore.ErrDeviceUnavailable) {
			t.Fatalf("round %d: Sign with swtpm gone: %v", round, err)
		}
		s.Resume(t)
		waitTPMState(t, b, keystore.DeviceReady)
	}
	for before := ok.Load(); ok.Load() < before+10 && !t.Failed(); {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	h := b.Health()
	t.Logf("ok %d, unavailable %d, recoveries %d, last error %q", ok.Load(), unavailable.Load(), h.Recoveries, h.LastError)
	if h.Recoveries != 2 {
		t.Fatalf("recoveries %d, want 2", h.Recoveries)
	}
	if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
}

// verifyRaw is verify without t.Fatal, for worker goroutines.
func verifyRaw(alg keystore.Algorithm, pub, digest, sig []byte) bool {
	c, _, _ := curveOf(alg)
	n := (c.Params().BitSize + 7) / 8
	if len(sig) != 2*n {
		return false
	}
	k, err := ecdsa.ParseUncompressedPublicKey(c, pub)
	if err != nil {
		return false
	}
	return ecdsa.Verify(k, digest, new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:]))
}
