package pkcs11

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestParallelGenerate creates and destroys token keys from several
// goroutines at once, as a batch of KeyPackages does. SoftHSM's object store
// fails some of these without the Backend's serialisation.
func TestParallelGenerate(t *testing.T) {
	be := openBackend(t, newToken(t))
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				alg := keystore.X25519
				if i%2 == 1 {
					alg = keystore.ECDSAP256
				}
				ref, _, err := be.Generate(ctx, fmt.Sprintf("g%d-%d", g, i), alg)
				if err != nil {
					errs <- err
					continue
				}
				if i%3 == 0 {
					if err := be.Destroy(ctx, ref); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
