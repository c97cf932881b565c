package tpm

import (
	"context"
	"crypto/sha256"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// opRecorder is a keystore.DeviceObserver that keeps what it was told.
type opRecorder struct {
	mu   sync.Mutex
	ops  []string
	errs map[string]int
}

func (r *opRecorder) ObserveDeviceOp(op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	if err != nil {
		if r.errs == nil {
			r.errs = map[string]int{}
		}
		r.errs[op]++
	}
}

// Every operation passes the command queue, so the observer sees each
// once, capabilities (attestation, credential activation) included, with
// the error of a failed one; names with spaces become underscores.
func TestObserverSeesEveryOperation(t *testing.T) {
	env := simEnv(t)
	rec := &opRecorder{}
	env.cfg.Observer = rec
	b := env.open(t)
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "observed", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("msg"))
	if _, err := b.Sign(ctx, ref, keystore.ECDSAP256, digest[:]); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(ctx, ref, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	blob, err := b.Seal(ctx, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
	att, err := b.Attest(ctx, ref, keystore.ECDSAP256, []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	// A credential that is not one: the TPM refuses it.
	if _, err := b.ActivateCredential(ctx, att.EndorsementKey, []byte{0, 4, 1, 2, 3, 4}, []byte{0, 4, 1, 2, 3, 4}); err == nil {
		t.Fatal("garbage credential activated")
	}
	if err := b.Destroy(ctx, ref); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := []string{"generate", "sign", "check", "seal", "unseal", "attest", "activate_credential", "destroy"}
	if i := slices.Index(rec.ops, "generate"); i < 0 || !slices.Equal(rec.ops[i:], want) {
		t.Errorf("observed %v, want %v at the end", rec.ops, want)
	}
	if len(rec.errs) != 1 || rec.errs["activate_credential"] != 1 {
		t.Errorf("observed errors %v, want one for activate_credential", rec.errs)
	}
}
