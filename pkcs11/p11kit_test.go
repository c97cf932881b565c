package pkcs11

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// requireP11Kit skips without p11-kit-server and p11-kit-client.so, unless
// MLSKEYD_REQUIRE_P11KIT=1.
func requireP11Kit(tb testing.TB) {
	tb.Helper()
	if srv, cli := FindP11Kit(); srv != "" && cli != "" {
		return
	}
	msg := "p11-kit-server or p11-kit-client.so not found (apt-get install p11-kit p11-kit-modules)"
	if os.Getenv("MLSKEYD_REQUIRE_P11KIT") == "1" {
		tb.Fatal(msg + "; MLSKEYD_REQUIRE_P11KIT=1 makes this a failure")
	}
	tb.Skip(msg)
}

var (
	socketOnce sync.Once
	socketPath string
	socketErr  error
)

// p11KitSocket is the one server socket path of this test process (see
// StartP11KitServer); tests using it must not run in parallel.
func p11KitSocket(t *testing.T) string {
	socketOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlskeyd-p11kit-")
		socketPath, socketErr = filepath.Join(dir, "p11kit.sock"), err
	})
	if socketErr != nil {
		t.Fatal(socketErr)
	}
	return socketPath
}

// forwardedToken makes a SoftHSM token, exports it with p11-kit-server and
// returns the server and a Config that opens it through p11-kit-client.so.
func forwardedToken(t *testing.T) (*P11KitServer, Config) {
	t.Helper()
	requireSoftHSM(t)
	requireP11Kit(t)
	dir := t.TempDir()
	h, err := InitSoftHSM(dir, testLabel)
	if err != nil {
		t.Fatal(err)
	}
	pin := RandomPIN()
	if err := h.InitToken(RandomPIN(), pin); err != nil {
		t.Fatal(err)
	}
	srv, err := StartP11KitServer(p11KitSocket(t), h.Module, testLabel, []string{"SOFTHSM2_CONF=" + h.ConfPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	t.Setenv(P11KitServerAddressEnv, srv.Address())
	cfg, err := srv.ClientConfig(pin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthInterval = 50 * time.Millisecond
	cfg.RecoveryMaxBackoff = 200 * time.Millisecond
	return srv, cfg
}

// waitState polls the backend's health (bounded, no timing assertion).
func waitState(t *testing.T, b *Backend, want keystore.DeviceState) {
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
	t.Fatalf("device state %q, waited for %q: %+v", b.Health().State, want, b.Health())
}

// Behind p11-kit only what the forwarder carries is offered: ECDSA, and
// sealing through the HMAC fallback (no AES-GCM, no ECDH, no EdDSA).
func TestP11KitCapabilitiesProbed(t *testing.T) {
	_, cfg := forwardedToken(t)
	b := openBackend(t, cfg)
	got := b.Algorithms()
	t.Logf("algorithms %v; seal %q; notes %v", got, b.SealMode(), b.ProbeNotes())
	want := []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDSAP521}
	if len(got) != len(want) {
		t.Fatalf("algorithms %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("algorithms %v, want %v", got, want)
		}
	}
	// Calls that bypass miekg/pkcs11 (attrs.go, genwrap.go) would reach an
	// uninitialised instance of p11-kit's client: they stay off.
	if moduleFns(b.mod.path, b.forwarded) != nil {
		t.Error("direct module calls enabled on a forwarded token")
	}
	if err := b.SealError(); err != nil || b.SealMode() != sealModeHMAC {
		t.Fatalf("seal mode %q, error %v; want hmac-kdf", b.SealMode(), err)
	}
	ctx := context.Background()
	blob, err := testSeal(ctx, b, []byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.Unseal(ctx, blob, []byte("aad")); err != nil || string(pt) != "secret" {
		t.Fatalf("unseal: %q %v", pt, err)
	}
	if _, err := b.Unseal(ctx, blob, []byte("other")); !errors.Is(err, ErrSealedBlob) {
		t.Fatalf("unseal with another aad: %v", err)
	}
	blob[len(blob)-1] ^= 1
	if _, err := b.Unseal(ctx, blob, []byte("aad")); !errors.Is(err, ErrSealedBlob) {
		t.Fatalf("unseal tampered: %v", err)
	}
}

// A direct SoftHSM token keeps AES-GCM.
func TestSoftHSMSealsWithGCM(t *testing.T) {
	b := openBackend(t, newToken(t))
	if b.SealMode() != sealModeGCM || b.SealError() != nil {
		t.Fatalf("seal mode %q, error %v", b.SealMode(), b.SealError())
	}
}

// The forwarding server dies under a load of signers and comes back: every
// call succeeds or fails with ErrDeviceUnavailable, the Backend serves
// again without being reopened, and no key is lost.
func TestP11KitServerRestart(t *testing.T) {
	srv, cfg := forwardedToken(t)
	b := openBackend(t, cfg)
	ctx := context.Background()
	var refs [][]byte
	var pubs [][]byte
	for _, id := range []string{"a", "b"} {
		ref, pub, err := b.Generate(ctx, id, keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		refs, pubs = append(refs, ref), append(pubs, pub)
	}
	doomed, _, err := b.Generate(ctx, "c", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("m"))
	verify := func(i int, sig []byte) bool {
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pubs[i])
		if err != nil {
			t.Error(err)
			return false
		}
		return ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	}
	stop := make(chan struct{})
	var ok, unavailable atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := (w + i) % len(refs)
				sig, err := b.Sign(ctx, refs[k], keystore.ECDSAP256, digest[:])
				switch {
				case err == nil:
					if !verify(k, sig) {
						t.Error("wrong signature")
						return
					}
					ok.Add(1)
				case errors.Is(err, keystore.ErrDeviceUnavailable):
					unavailable.Add(1)
					time.Sleep(5 * time.Millisecond)
				default:
					t.Errorf("Sign: %v (not UNAVAILABLE)", err)
					return
				}
			}
		})
	}
	for round := range 2 {
		for before := ok.Load(); ok.Load() < before+20 && !t.Failed(); {
			time.Sleep(5 * time.Millisecond)
		}
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		waitState(t, b, keystore.DeviceUnavailable)
		_, err := b.Sign(ctx, refs[0], keystore.ECDSAP256, digest[:])
		if !errors.Is(err, keystore.ErrDeviceUnavailable) {
			t.Fatalf("round %d: Sign with the server gone: %v", round, err)
		}
		if round == 0 {
			// A key retired during the outage is destroyed when the
			// token is back, not left as an orphan.
			if err := b.Destroy(ctx, doomed); !errors.Is(err, keystore.ErrDeviceUnavailable) {
				t.Fatalf("Destroy with the server gone: %v", err)
			}
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		waitState(t, b, keystore.DeviceReady)
	}
	for before := ok.Load(); ok.Load() < before+20 && !t.Failed(); {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("signatures %d, unavailable %d, recoveries %d, last error %q", ok.Load(), unavailable.Load(), b.Health().Recoveries, b.Health().LastError)
	if b.Health().Recoveries != 2 {
		t.Fatalf("recoveries %d, want 2", b.Health().Recoveries)
	}
	keys, err := b.List(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys after restarts: %v %v", keys, err)
	}
	blob, err := testSeal(ctx, b, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
}
