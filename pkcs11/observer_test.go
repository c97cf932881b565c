package pkcs11

import (
	"context"
	"errors"
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
	errs map[string][]error
}

func (r *opRecorder) ObserveDeviceOp(op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	if d < 0 {
		r.ops = append(r.ops, "negative duration")
	}
	if err != nil {
		if r.errs == nil {
			r.errs = map[string][]error{}
		}
		r.errs[op] = append(r.errs[op], err)
	}
}

func (r *opRecorder) take() ([]string, map[string][]error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops, errs := r.ops, r.errs
	r.ops, r.errs = nil, nil
	return ops, errs
}

// Every operation the keystore can ask of the token, capabilities
// included, reaches the observer once, with its error; the Backend stays
// itself (no wrapper), so it keeps every capability.
func TestObserverSeesEveryOperation(t *testing.T) {
	cfg := newToken(t)
	rec := &opRecorder{}
	cfg.Observer = rec
	b := openBackend(t, cfg)
	if ops, _ := rec.take(); !slices.Contains(ops, "probe") {
		t.Errorf("Open's probes not observed: %v", ops)
	}
	ctx := context.Background()
	ref, _, err := b.Generate(ctx, "0123456789abcdef0123456789abcdef", keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sign(ctx, ref, keystore.Ed25519, []byte("msg")); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(ctx, ref, keystore.Ed25519); err != nil {
		t.Fatal(err)
	}
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(ctx, "installation-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Binding(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.NewEpoch(ctx, "e1"); err != nil {
		t.Fatal(err)
	}
	blob, err := b.SealIn(ctx, "e1", []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Epochs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sign(ctx, ref, keystore.Ed25519, []byte("msg")); !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		t.Fatalf("sign with a destroyed key: %v", err)
	}
	ops, errs := rec.take()
	// NewEpoch checks the new key with a seal round trip of its own.
	want := []string{"generate", "sign", "check", "list", "bind", "binding", "new_epoch", "seal", "unseal", "seal", "unseal", "list_epochs", "destroy", "sign"}
	if !slices.Equal(ops, want) {
		t.Errorf("observed %v, want %v", ops, want)
	}
	if len(errs) != 1 || len(errs["sign"]) != 1 || !errors.Is(errs["sign"][0], keystore.ErrDeviceKeyNotFound) {
		t.Errorf("observed errors %v, want the one key-not-found of the last sign", errs)
	}
}
