package tpm

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

func TestSeal(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		b := env.open(t)
		ctx := context.Background()
		for _, n := range []int{0, 1, 32, 66, MaxSealInput} {
			pt := bytes.Repeat([]byte{byte(n)}, n)
			blob, err := b.Seal(ctx, pt, []byte("key-1"))
			if err != nil {
				t.Fatalf("Seal %d bytes: %v", n, err)
			}
			if blob[0] != blobSealed {
				t.Fatalf("version byte 0x%02x", blob[0])
			}
			got, err := b.Unseal(ctx, blob, []byte("key-1"))
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Unseal %d bytes: %x, %v", n, got, err)
			}
			if _, err := b.Unseal(ctx, blob, []byte("key-2")); !errors.Is(err, ErrSealedBlob) {
				t.Fatalf("wrong aad: %v, want ErrSealedBlob", err)
			}
		}
		if _, err := b.Seal(ctx, make([]byte, MaxSealInput+1), nil); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Fatalf("oversize plaintext: %v", err)
		}
		blob, err := b.Seal(ctx, []byte("private key"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		// Flip a byte in the encrypted private area, then in the public
		// area: the TPM's integrity and name checks must refuse both.
		for _, i := range []int{len(blob) - 5, 10} {
			bad := append([]byte(nil), blob...)
			bad[i] ^= 0x40
			if pt, err := b.Unseal(ctx, bad, []byte("aad")); err == nil {
				t.Fatalf("tampered byte %d: unsealed %q", i, pt)
			} else {
				t.Logf("tampered byte %d: %v", i, err)
			}
		}
		if _, err := b.Unseal(ctx, blob[:len(blob)-1], []byte("aad")); !errors.Is(err, ErrBadBlob) {
			t.Fatalf("truncated: %v", err)
		}
		// A key reference is not a sealed blob, nor the other way round.
		ref, _, err := b.Generate(ctx, "k", keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Unseal(ctx, ref, nil); !errors.Is(err, ErrBadBlob) {
			t.Fatalf("Unseal(key ref): %v", err)
		}
		if err := b.Check(ctx, blob, keystore.ECDSAP256); !errors.Is(err, ErrBadBlob) {
			t.Fatalf("Check(sealed blob): %v", err)
		}
	})
}
