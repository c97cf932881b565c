package tpm

import (
	"context"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestParsedKeyRefsCached: a reference parsed once is not parsed again,
// yet every use is still checked against the algorithm it is used as, and
// other bytes are parsed (and refused) on their own.
func TestParsedKeyRefsCached(t *testing.T) {
	env := simEnv(t)
	b := env.open(t)
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	d := digestFor(keystore.ECDSAP256, "m")
	if _, err := b.Sign(ctx, ref, keystore.ECDSAP256, d); err != nil {
		t.Fatal(err)
	}
	first := b.parsed.get(blobKeyOf(ref))
	if first == nil {
		t.Fatal("the reference was not kept parsed")
	}
	if _, bl, err := b.keyBlob(ref, keystore.ECDSAP256); err != nil || bl != first {
		t.Fatalf("second parse: %p %v, want the kept %p", bl, err, first)
	}
	if _, err := b.Sign(ctx, ref, keystore.ECDSAP384, digestFor(keystore.ECDSAP384, "m")); err == nil {
		t.Fatal("a P-256 key signed as P-384 once its reference was kept")
	}
	bad := append([]byte(nil), ref...)
	bad[len(bad)-1] ^= 1
	bad = append(bad, 0)
	if _, _, err := b.keyBlob(bad, keystore.ECDSAP256); err == nil {
		t.Fatal("a reference with a trailing byte was accepted")
	}
}

func TestBlobCacheBounded(t *testing.T) {
	c := blobCache{max: 3}
	for i := range 5 {
		c.put([32]byte{byte(i)}, &blob{})
	}
	if len(c.m) != 3 || len(c.order) != 3 || c.get([32]byte{0}) != nil || c.get([32]byte{4}) == nil {
		t.Fatalf("cache of 3 after 5 puts: %d entries, order %d", len(c.m), len(c.order))
	}
}
