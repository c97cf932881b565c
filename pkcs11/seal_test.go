package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestSeal(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	for _, pt := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("k"), 4000)} {
		aad := []byte("catalog-id-42")
		blob, err := b.Seal(ctx, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(blob) != 1+12+len(pt)+16 {
			t.Fatalf("blob of %d bytes for %d", len(blob), len(pt))
		}
		got, err := b.Unseal(ctx, blob, aad)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatal("round trip changed the plaintext")
		}
		blob2, _ := b.Seal(ctx, pt, aad)
		if bytes.Equal(blob[1:13], blob2[1:13]) {
			t.Fatal("IV reused")
		}
		if _, err := b.Unseal(ctx, blob, []byte("catalog-id-43")); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("wrong aad: %v", err)
		}
		if _, err := b.Unseal(ctx, blob, nil); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("missing aad: %v", err)
		}
		for _, i := range []int{0, 1, 12, 13, len(blob) - 1} {
			bad := bytes.Clone(blob)
			bad[i] ^= 0x80
			if _, err := b.Unseal(ctx, bad, aad); !errors.Is(err, ErrSealedBlob) {
				t.Fatalf("tampered byte %d: %v", i, err)
			}
		}
		if _, err := b.Unseal(ctx, blob[:len(blob)-1], aad); !errors.Is(err, ErrSealedBlob) {
			t.Fatalf("truncated: %v", err)
		}
	}
	// A second backend on another token cannot open the blob.
}

// TestSealKeyRace: two sealing keys exist, as after two processes raced to
// create one. Blobs under either key still open, and every Backend seals
// with the same key (the lowest CKA_ID).
func TestSealKeyRace(t *testing.T) {
	cfg := newToken(t)
	b := openBackend(t, cfg)
	ctx := context.Background()
	before, err := b.Seal(ctx, []byte("before"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.withSession(ctx, b.createSealKey); err != nil {
		t.Fatal(err)
	}
	b2 := openBackend(t, cfg) // sees both keys
	if len(b2.sealIDs) != 2 {
		t.Fatalf("%d sealing keys, want 2", len(b2.sealIDs))
	}
	after, err := b2.Seal(ctx, []byte("after"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	// b still knows only the first key: Unseal looks again and finds it.
	for _, bb := range []*Backend{b, b2} {
		for blob, want := range map[*[]byte]string{&before: "before", &after: "after"} {
			pt, err := bb.Unseal(ctx, *blob, []byte("a"))
			if err != nil || string(pt) != want {
				t.Fatalf("Unseal: %q, %v", pt, err)
			}
		}
	}
	if b.sealIDs[0] != b2.sealIDs[0] {
		t.Fatalf("backends disagree on the sealing key: %v vs %v", b.sealIDs, b2.sealIDs)
	}
}
