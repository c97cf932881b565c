package tpm

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// BenchmarkSign signs with a key that stays loaded (an LRU hit), through
// the Backend: blob, queue, TPM2_Sign.
func BenchmarkSign(b *testing.B) {
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384} {
		b.Run(string(alg), func(b *testing.B) {
			eachTPMBench(b, func(b *testing.B, env *tpmEnv) {
				be := env.open(b)
				ctx := context.Background()
				ref, _, err := be.Generate(ctx, "k", alg)
				if err != nil {
					b.Fatal(err)
				}
				d := digestFor(alg, "m")
				b.ResetTimer()
				for b.Loop() {
					if _, err := be.Sign(ctx, ref, alg, d); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkSignGoTPM is the reference for the backend's own path: go-tpm's
// TPM2_Sign on a key kept loaded, nothing else (no blob, no queue).
func BenchmarkSignGoTPM(b *testing.B) {
	eachTPMBench(b, func(b *testing.B, env *tpmEnv) {
		be, s, bl, d := benchP256Key(b, env)
		ctx := context.Background()
		err := be.do(ctx, "bench", func() error {
			obj, err := be.load(bl)
			if err != nil {
				return err
			}
			defer be.flush(obj.Handle)
			b.ResetTimer()
			for b.Loop() {
				if err := goTPMSign(be, obj, s, d); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkSignRevocation compares, on swtpm (the simulator has no NV
// bits), signing with a key without a revocation bit (the default), with
// one (--tpm-revocation-roles all: TPM2_PolicyNV in the kept policy
// session, then TPM2_Sign) and with one but a new policy session per
// signature (TPM2_StartAuthSession and TPM2_FlushContext as well), the
// cost the kept session avoids.
func BenchmarkSignRevocation(b *testing.B) {
	for _, tc := range []struct {
		name        string
		bit, perSig bool
	}{{"nobit", false, false}, {"bit", true, false}, {"bit-session-per-sign", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			env := swtpmEnv(b)
			cfg := env.cfg
			cfg.RevokeSignatureKeys = tc.bit
			be := openCfg(b, cfg)
			ctx := context.Background()
			alg := keystore.ECDSAP256
			ref, _, err := be.Generate(ctx, "k", alg)
			if err != nil {
				b.Fatal(err)
			}
			if (ref[0] == blobKeyRevoke) != tc.bit {
				b.Fatalf("blob 0x%02x", ref[0])
			}
			d := digestFor(alg, "m")
			for b.Loop() {
				if _, err := be.Sign(ctx, ref, alg, d); err != nil {
					b.Fatal(err)
				}
				if tc.perSig {
					be.do(ctx, "bench", func() error { be.dropSignSession(); return nil })
				}
			}
		})
	}
}

// BenchmarkECDH derives with a loaded key; each call also starts a salted
// session for parameter encryption.
func BenchmarkECDH(b *testing.B) {
	eachTPMBench(b, func(b *testing.B, env *tpmEnv) {
		be := env.open(b)
		ctx := context.Background()
		ref, _, err := be.Generate(ctx, "k", keystore.ECDHP256)
		if err != nil {
			b.Fatal(err)
		}
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		pub := peer.PublicKey().Bytes()
		for b.Loop() {
			if _, err := be.ECDH(ctx, ref, keystore.ECDHP256, pub); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSignLoadFlush is the no-cache alternative: TPM2_Load, TPM2_Sign
// and TPM2_FlushContext per signature.
func BenchmarkSignLoadFlush(b *testing.B) {
	eachTPMBench(b, func(b *testing.B, env *tpmEnv) {
		be, s, bl, d := benchP256Key(b, env)
		ctx := context.Background()
		for b.Loop() {
			err := be.do(ctx, "bench", func() error {
				obj, err := be.load(bl)
				if err != nil {
					return err
				}
				err = goTPMSign(be, obj, s, d)
				if ferr := be.flush(obj.Handle); err == nil {
					err = ferr
				}
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEpochRotation: one rotation (new parent, re-seal of the active
// sealed keys, eviction of the old parent) with 20 active sealed keys: the
// cost --seal-epoch retire pays at every retirement.
func BenchmarkEpochRotation(b *testing.B) {
	env := swtpmEnv(b)
	be := env.open(b)
	ctx := context.Background()
	st, err := keystore.Open(ctx, b.TempDir()+"/catalog.db", be, keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for range 20 {
		if _, err := st.Create(ctx, keystore.KeySpec{Role: keystore.RoleInit, Suite: 1, Algorithm: keystore.X25519}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if err := st.RotateEpoch(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnsealEpoch: one unseal of a blob under a persistent epoch
// parent (load, unseal in a salted session, flush).
func BenchmarkUnsealEpoch(b *testing.B) {
	env := swtpmEnv(b)
	be := env.open(b)
	ctx := context.Background()
	if err := be.NewEpoch(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	blob, err := be.SealIn(ctx, "bench", make([]byte, 32), []byte("aad"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := be.Unseal(ctx, blob, []byte("aad")); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenWelcomeTPM is the device part of opening a Welcome with a
// P-256 init key on swtpm: TPM2_ECDH_ZGen, then retiring the key. With a
// revocation bit ("bit"), ZGen runs under a policy session after
// TPM2_PolicyNV and retiring sets the bit (TPM2_NV_SetBits); without
// ("epoch"), ZGen runs under an HMAC session and retiring flushes the key.
// Key generation is not timed.
func BenchmarkOpenWelcomeTPM(b *testing.B) {
	env := swtpmEnv(b)
	for _, mode := range []struct {
		name    string
		indices int
	}{{"epoch", -1}, {"bit", maxRevIndices}} {
		b.Run(mode.name, func(b *testing.B) {
			cfg := env.cfg
			cfg.RevocationIndices = mode.indices
			be := openCfg(b, cfg)
			ctx := context.Background()
			peer, _ := ecdh.P256().GenerateKey(rand.Reader)
			pub := peer.PublicKey().Bytes()
			n := 0
			for b.Loop() {
				b.StopTimer()
				if n%revBits == revBits-1 {
					if _, err := be.Reclaim(ctx); err != nil {
						b.Fatal(err)
					}
				}
				n++
				ref, _, err := be.Generate(ctx, "k", keystore.ECDHP256)
				if err != nil {
					b.Fatal(err)
				}
				if (ref[0] == blobKeyRevoke) != (mode.indices > 0) {
					b.Fatalf("blob 0x%02x", ref[0])
				}
				b.StartTimer()
				if _, err := be.ECDH(ctx, ref, keystore.ECDHP256, pub); err != nil {
					b.Fatal(err)
				}
				if err := be.Destroy(ctx, ref); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchP256Key makes a P-256 key and returns what signing with it needs.
func benchP256Key(b *testing.B, env *tpmEnv) (*Backend, algSpec, *blob, []byte) {
	be := env.open(b)
	alg := keystore.ECDSAP256
	ref, _, err := be.Generate(context.Background(), "k", alg)
	if err != nil {
		b.Fatal(err)
	}
	s, bl, err := be.keyBlob(ref, alg)
	if err != nil {
		b.Fatal(err)
	}
	return be, s, bl, digestFor(alg, "m")
}

// goTPMSign is go-tpm's TPM2_Sign with the password session on a loaded
// key. Runs with the queue held.
func goTPMSign(be *Backend, obj tpm2.NamedHandle, s algSpec, d []byte) error {
	_, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: d},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: s.hash}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(be.tpm)
	return err
}
