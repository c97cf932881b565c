package pkcs11

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

func benchSign(b *testing.B, alg keystore.Algorithm) {
	be := openBackend(b, newToken(b))
	ctx := context.Background()
	ref, _, err := be.Generate(ctx, "bench", alg)
	if err != nil {
		b.Fatal(err)
	}
	msg := sha256.Sum256([]byte("benchmark"))
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.Sign(ctx, ref, alg, msg[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := be.Sign(ctx, ref, alg, msg[:]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func benchECDH(b *testing.B, alg keystore.Algorithm, curve ecdh.Curve) {
	be := openBackend(b, newToken(b))
	ctx := context.Background()
	ref, _, err := be.Generate(ctx, "bench", alg)
	if err != nil {
		b.Fatal(err)
	}
	peer, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	pub := peer.PublicKey().Bytes()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.ECDH(ctx, ref, alg, pub); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := be.ECDH(ctx, ref, alg, pub); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func benchGenerate(b *testing.B, alg keystore.Algorithm) {
	be := openBackend(b, newToken(b))
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		ref, _, err := be.Generate(ctx, fmt.Sprintf("gen-%d", i), alg)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := be.Destroy(ctx, ref); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func BenchmarkSignEd25519(b *testing.B) { benchSign(b, keystore.Ed25519) }
func BenchmarkSignP256(b *testing.B)    { benchSign(b, keystore.ECDSAP256) }
func BenchmarkECDHX25519(b *testing.B)  { benchECDH(b, keystore.X25519, ecdh.X25519()) }
func BenchmarkECDHP256(b *testing.B)    { benchECDH(b, keystore.ECDHP256, ecdh.P256()) }

func BenchmarkGenerateEd25519(b *testing.B) { benchGenerate(b, keystore.Ed25519) }
func BenchmarkGenerateX25519(b *testing.B)  { benchGenerate(b, keystore.X25519) }
func BenchmarkGenerateP256(b *testing.B)    { benchGenerate(b, keystore.ECDSAP256) }

func BenchmarkSeal(b *testing.B) {
	be := openBackend(b, newToken(b))
	ctx := context.Background()
	pt := make([]byte, 64)
	aad := []byte("catalog-id")
	if err := be.NewEpoch(ctx, testEpoch); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		blob, err := be.SealIn(ctx, testEpoch, pt, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := be.Unseal(ctx, blob, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	cfg := newToken(b)
	ctx := context.Background()
	for b.Loop() {
		be, err := Open(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := be.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEpochRotation: one rotation (new AES key, re-seal of 200 active
// sealed keys, destruction of the old key): the cost --seal-epoch retire
// pays at every retirement.
func BenchmarkEpochRotation(b *testing.B) {
	be := openBackend(b, newToken(b))
	ctx := context.Background()
	st, err := keystore.Open(ctx, b.TempDir()+"/catalog.db", sealOnly{be}, keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for range 200 {
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
