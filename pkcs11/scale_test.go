package pkcs11

import (
	"context"
	"fmt"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestGenerateDoesNotSearch: making a key pair and using it right after
// costs no token search, so the cost of a new key does not grow with the
// number of objects on the token.
func TestGenerateDoesNotSearch(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	before := b.searches.Load()
	var refs [][]byte
	for i := range 3 {
		for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.X25519} {
			if b.specs[alg] == nil {
				continue
			}
			ref, _, err := b.Generate(ctx, fmt.Sprintf("nosearch%d%s", i, alg), alg)
			if err != nil {
				t.Fatal(err)
			}
			if alg.IsSigning() {
				if _, err := b.Sign(ctx, ref, alg, make([]byte, 32)); err != nil {
					t.Fatal(err)
				}
			}
			refs = append(refs, ref)
		}
	}
	for _, ref := range refs {
		if err := b.Destroy(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.searches.Load() - before; n != 0 {
		t.Fatalf("generating, using and destroying %d keys ran %d token searches, want 0", len(refs), n)
	}
	if ids := listIDs(t, b); len(ids) != 0 {
		t.Fatalf("token still holds %v", ids)
	}
}

// TestDestroyStaleCachedHandle: a cached handle that no longer names the
// key (the token gave it to another object) is not destroyed; the key is
// found by searching instead.
func TestDestroyStaleCachedHandle(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	refA, _, err := b.Generate(ctx, "stalea", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	refB, _, err := b.Generate(ctx, "staleb", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	// Point A's cached handles at B's objects.
	for _, class := range []uint{p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY} {
		h, _ := b.cache.get(objKey{class, "staleb"})
		b.cache.put(objKey{class, "stalea"}, h)
	}
	if err := b.Destroy(ctx, refA); err != nil {
		t.Fatal(err)
	}
	ids := listIDs(t, b)
	if _, ok := ids["stalea"]; ok {
		t.Fatal("key A survived its destruction")
	}
	if _, ok := ids["staleb"]; !ok {
		t.Fatal("destroying A through a stale cached handle destroyed B")
	}
	if _, err := b.Sign(ctx, refB, keystore.ECDSAP256, make([]byte, 32)); err != nil {
		t.Fatalf("B after A's destruction: %v", err)
	}
}

// TestListCachesHandles: after List (which start-up runs), checking every
// key (which start-up does next) searches nothing.
func TestListCachesHandles(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	var refs [][]byte
	for i := range 4 {
		ref, _, err := b.Generate(ctx, fmt.Sprintf("listcache%d", i), keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	b.cache.clear() // as after a restart
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	before := b.searches.Load()
	for _, ref := range refs {
		if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.searches.Load() - before; n != 0 {
		t.Fatalf("checking %d listed keys ran %d token searches, want 0", len(refs), n)
	}
}
