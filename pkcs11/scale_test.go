package pkcs11

import (
	"context"
	"fmt"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestGenerateDoesNotSearch: making a key pair and using it right after
// costs no token search, so the cost of a new key does not grow with the
// number of objects on the token.
func TestGenerateDoesNotSearch(t *testing.T) {
	b := openBackend(t, newToken(t))
	ctx := context.Background()
	before := b.searches.Load()
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
		}
	}
	if n := b.searches.Load() - before; n != 0 {
		t.Fatalf("generating and using 6 keys ran %d token searches, want 0", n)
	}
}
