package tpm

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var allECC = []keystore.Algorithm{
	keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDSAP521,
	keystore.ECDHP256, keystore.ECDHP384, keystore.ECDHP521,
}

func curveOf(alg keystore.Algorithm) (elliptic.Curve, ecdh.Curve, crypto.Hash) {
	switch alg {
	case keystore.ECDSAP256, keystore.ECDHP256:
		return elliptic.P256(), ecdh.P256(), crypto.SHA256
	case keystore.ECDSAP384, keystore.ECDHP384:
		return elliptic.P384(), ecdh.P384(), crypto.SHA384
	default:
		return elliptic.P521(), ecdh.P521(), crypto.SHA512
	}
}

func digestFor(alg keystore.Algorithm, msg string) []byte {
	_, _, h := curveOf(alg)
	d := h.New()
	d.Write([]byte(msg))
	return d.Sum(nil)
}

// verify converts the raw r||s to DER and checks it with crypto/ecdsa.
func verify(t testing.TB, alg keystore.Algorithm, pub, digest, sig []byte) {
	t.Helper()
	c, _, _ := curveOf(alg)
	n := (c.Params().BitSize + 7) / 8
	if len(sig) != 2*n {
		t.Fatalf("%s: signature is %d bytes, want %d", alg, len(sig), 2*n)
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdsa.ParseUncompressedPublicKey(c, pub)
	if err != nil {
		t.Fatalf("%s: public key: %v", alg, err)
	}
	if !ecdsa.VerifyASN1(k, digest, der) {
		t.Fatalf("%s: signature does not verify", alg)
	}
}

func signVerify(t testing.TB, b *Backend, alg keystore.Algorithm, ref, pub []byte, msg string) {
	t.Helper()
	d := digestFor(alg, msg)
	sig, err := b.Sign(context.Background(), ref, alg, d)
	if err != nil {
		t.Fatalf("Sign %s: %v", alg, err)
	}
	verify(t, alg, pub, d, sig)
}

func ecdhCheck(t testing.TB, b *Backend, alg keystore.Algorithm, ref, pub []byte) {
	t.Helper()
	_, c, _ := curveOf(alg)
	peer, err := c.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	z, err := b.ECDH(context.Background(), ref, alg, peer.PublicKey().Bytes())
	if err != nil {
		t.Fatalf("ECDH %s: %v", alg, err)
	}
	mine, err := c.NewPublicKey(pub)
	if err != nil {
		t.Fatalf("%s: public key: %v", alg, err)
	}
	want, err := peer.ECDH(mine)
	if err != nil {
		t.Fatal(err)
	}
	if string(z) != string(want) {
		t.Fatalf("ECDH %s: TPM %x, Go %x", alg, z, want)
	}
}

func TestAlgorithms(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		b := env.open(t)
		got := map[keystore.Algorithm]bool{}
		for _, a := range b.Algorithms() {
			got[a] = true
		}
		for _, a := range allECC {
			if !got[a] {
				t.Errorf("%s missing: %s", a, b.Unsupported()[a])
			}
		}
		for _, a := range []keystore.Algorithm{keystore.Ed25519, keystore.Ed448, keystore.X25519, keystore.X448} {
			if got[a] {
				t.Errorf("%s reported; a TPM cannot do it", a)
			}
			if _, _, err := b.Generate(context.Background(), "x", a); !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
				t.Errorf("Generate %s: %v, want ErrUnsupportedAlgorithm", a, err)
			}
		}
		info := b.Info()
		t.Logf("Info: %+v", info)
		if info.Backend != "tpm" || info.Device == "" {
			t.Errorf("Info = %+v", info)
		}
	})
}

func TestKeys(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		b := env.open(t)
		ctx := context.Background()
		for _, alg := range allECC {
			t.Run(string(alg), func(t *testing.T) {
				ref, pub, err := b.Generate(ctx, "k-"+string(alg), alg)
				if err != nil {
					t.Fatalf("Generate: %v", err)
				}
				s := algSpecs[alg]
				if len(pub) != 1+2*s.coordSize || pub[0] != 4 {
					t.Fatalf("pub is %d bytes", len(pub))
				}
				if err := b.Check(ctx, ref, alg); err != nil {
					t.Fatalf("Check: %v", err)
				}
				if alg.IsSigning() {
					signVerify(t, b, alg, ref, pub, "hello")
					signVerify(t, b, alg, ref, pub, "again")
					_, err := b.Sign(ctx, ref, alg, make([]byte, 20))
					if !errors.Is(err, keystore.ErrInvalidArgument) {
						t.Errorf("short digest: %v, want ErrInvalidArgument", err)
					}
					if _, err := b.ECDH(ctx, ref, alg, pub); !errors.Is(err, keystore.ErrUnsupportedAlgorithm) && !errors.Is(err, keystore.ErrWrongRole) {
						t.Errorf("ECDH with a signing key: %v", err)
					}
				} else {
					ecdhCheck(t, b, alg, ref, pub)
					ecdhCheck(t, b, alg, ref, pub)
					off := append([]byte(nil), pub...)
					off[len(off)-1] ^= 1 // y no longer on the curve
					if _, err := b.ECDH(ctx, ref, alg, off); !errors.Is(err, keystore.ErrInvalidPeerKey) {
						t.Errorf("off-curve peer: %v, want ErrInvalidPeerKey", err)
					} else {
						t.Logf("off-curve peer: %v", err)
					}
					if _, err := b.ECDH(ctx, ref, alg, pub[:10]); !errors.Is(err, keystore.ErrInvalidPeerKey) {
						t.Errorf("short peer: %v, want ErrInvalidPeerKey", err)
					}
				}
				// A key of one role is not accepted for the other.
				other := map[keystore.Algorithm]keystore.Algorithm{
					keystore.ECDSAP256: keystore.ECDHP256, keystore.ECDHP256: keystore.ECDSAP256,
					keystore.ECDSAP384: keystore.ECDHP384, keystore.ECDHP384: keystore.ECDSAP384,
					keystore.ECDSAP521: keystore.ECDHP521, keystore.ECDHP521: keystore.ECDSAP521,
				}[alg]
				if err := b.Check(ctx, ref, other); !errors.Is(err, keystore.ErrWrongRole) {
					t.Errorf("Check as %s: %v, want ErrWrongRole", other, err)
				}
				if err := b.Destroy(ctx, ref); err != nil {
					t.Fatalf("Destroy: %v", err)
				}
				if err := b.Destroy(ctx, ref); err != nil {
					t.Fatalf("second Destroy: %v", err)
				}
			})
		}
		if err := b.Check(ctx, nil, keystore.ECDSAP256); !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
			t.Errorf("Check(nil): %v", err)
		}
		if err := b.Check(ctx, []byte{1, 0, 5, 1}, keystore.ECDSAP256); !errors.Is(err, ErrBadBlob) {
			t.Errorf("Check(garbage): %v", err)
		}
	})
}

// TestEviction uses more keys than LoadedKeys round-robin: every use after
// the first round is a cache miss that evicts, and the TPM (3 transient
// slots) must never run out of object memory.
func TestEviction(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		b := env.open(t)
		ctx := context.Background()
		type key struct {
			alg      keystore.Algorithm
			ref, pub []byte
		}
		var keys []key
		for i := 0; i < 5; i++ {
			alg := []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDHP384, keystore.ECDSAP521}[i%3]
			ref, pub, err := b.Generate(ctx, fmt.Sprint(i), alg)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, key{alg, ref, pub})
		}
		for round := 0; round < 3; round++ {
			for _, k := range keys {
				if k.alg.IsSigning() {
					signVerify(t, b, k.alg, k.ref, k.pub, "m")
				} else {
					ecdhCheck(t, b, k.alg, k.ref, k.pub)
				}
				// Seal and Unseal need a slot of their own too.
				if round == 1 {
					bl, err := b.Seal(ctx, []byte("x"), nil)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := b.Unseal(ctx, bl, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if n := len(b.lru.entries); n != 2 {
			t.Errorf("%d keys loaded, want LoadedKeys=2", n)
		}
	})
}

func TestConcurrentSign(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		b := env.open(t)
		ctx := context.Background()
		type key struct{ ref, pub []byte }
		var keys []key
		for i := 0; i < 3; i++ {
			ref, pub, err := b.Generate(ctx, fmt.Sprint(i), keystore.ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, key{ref, pub})
		}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					k := keys[(g+i)%len(keys)]
					d := digestFor(keystore.ECDSAP256, fmt.Sprint(g, i))
					sig, err := b.Sign(ctx, k.ref, keystore.ECDSAP256, d)
					if err != nil {
						errs <- err
						return
					}
					c := elliptic.P256()
					pk, _ := ecdsa.ParseUncompressedPublicKey(c, k.pub)
					der, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])})
					if !ecdsa.VerifyASN1(pk, d, der) {
						errs <- errors.New("bad signature")
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// TestReopen: a blob made before closing the Backend (and, for swtpm,
// restarting the process with its state directory) still signs, because
// the SRK is derived again from the same seed and template.
func TestReopen(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		ref, pub, err := b.Generate(ctx, "a", keystore.ECDSAP384)
		if err != nil {
			t.Fatal(err)
		}
		dref, dpub, err := b.Generate(ctx, "b", keystore.ECDHP256)
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := b.Seal(ctx, []byte("secret"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := b.Sign(ctx, ref, keystore.ECDSAP384, digestFor(keystore.ECDSAP384, "x")); !errors.Is(err, ErrClosed) {
			t.Errorf("Sign after Close: %v, want ErrClosed", err)
		}
		env.restart(t)
		b2 := env.open(t)
		if err := b2.Check(ctx, ref, keystore.ECDSAP384); err != nil {
			t.Fatalf("Check after reopen: %v", err)
		}
		signVerify(t, b2, keystore.ECDSAP384, ref, pub, "after restart")
		ecdhCheck(t, b2, keystore.ECDHP256, dref, dpub)
		if pt, err := b2.Unseal(ctx, sealed, []byte("aad")); err != nil || string(pt) != "secret" {
			t.Fatalf("Unseal after reopen: %q, %v", pt, err)
		}
		t.Logf("%s: commands re-sent after TPM_RC_RETRY/YIELDED/TESTING: %d", env.name, b2.tpm.(*retryTPM).retried.Load())
	})
}

func TestForeignBlob(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		ref, _, err := b.Generate(ctx, "a", keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := b.Seal(ctx, []byte("secret"), nil)
		if err != nil {
			t.Fatal(err)
		}
		b.Close() // one simulator per process
		o := openCfg(t, env.foreign(t))
		err = o.Check(ctx, ref, keystore.ECDSAP256)
		if !errors.Is(err, ErrForeignBlob) {
			t.Fatalf("Check of a foreign blob: %v, want ErrForeignBlob", err)
		}
		var fe *keystore.ForeignKeyError
		if !errors.As(err, &fe) || err.Error() != "blob does not load on this TPM (TPM_RC_INTEGRITY): this catalog belongs to another TPM or storage root key" {
			t.Fatalf("Check of a foreign blob: %q, want a keystore.ForeignKeyError saying so", err)
		}
		if _, err := o.Sign(ctx, ref, keystore.ECDSAP256, digestFor(keystore.ECDSAP256, "m")); !errors.Is(err, ErrForeignBlob) {
			t.Fatalf("Sign with a foreign blob: %v, want ErrForeignBlob", err)
		}
		if _, err := o.Unseal(ctx, sealed, nil); !errors.Is(err, ErrForeignBlob) {
			t.Fatalf("Unseal of a foreign blob: %v, want ErrForeignBlob", err)
		}
	})
}

// TestBusy holds the queue, as a slow TPM command would, and checks that
// callers give up with ErrBusy at their deadline or at CommandTimeout.
func TestBusy(t *testing.T) {
	env := simEnv(t)
	env.cfg.CommandTimeout = 200 * time.Millisecond
	b := env.open(t)
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "a", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	d := digestFor(keystore.ECDSAP256, "m")

	b.queue <- struct{}{} // hold the TPM
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = b.Sign(short, ref, keystore.ECDSAP256, d)
	if !errors.Is(err, ErrBusy) || !errors.Is(err, keystore.ErrDeviceBusy) {
		t.Fatalf("Sign with a short deadline: %v, want ErrBusy (keystore.ErrDeviceBusy)", err)
	}
	if el := time.Since(start); el > 150*time.Millisecond {
		t.Errorf("gave up after %v, want about 30ms", el)
	}
	_, err = b.Sign(ctx, ref, keystore.ECDSAP256, d)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Sign past CommandTimeout: %v, want ErrBusy", err)
	}
	t.Logf("busy: %v", err)
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := b.Sign(cctx, ref, keystore.ECDSAP256, d); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	<-b.queue
	if _, err := b.Sign(ctx, ref, keystore.ECDSAP256, d); err != nil {
		t.Fatalf("Sign after release: %v", err)
	}
}
