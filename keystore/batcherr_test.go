package keystore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// failAfter is a device that fails every generation after the first ok.
type failAfter struct {
	*fakeBackend
	ok    int32
	calls atomic.Int32
}

func (f *failAfter) Generate(ctx context.Context, id string, alg Algorithm) ([]byte, []byte, error) {
	if f.calls.Add(1) > f.ok {
		return nil, nil, errors.New("CKR_DEVICE_ERROR (0x30)")
	}
	return f.fakeBackend.Generate(ctx, id, alg)
}

func TestBatchFailureIsOneAggregatedError(t *testing.T) {
	be := &failAfter{fakeBackend: newFake(), ok: 10}
	s, _ := openStore(t, be, Options{})
	specs := make([]KeySpec, 400)
	for i := range specs {
		specs[i] = KeySpec{Role: RoleInit, Algorithm: X25519}
	}
	_, err := s.NewBatch().Generate(context.Background(), specs)
	if err == nil {
		t.Fatal("batch succeeded")
	}
	var de *DeviceError
	if !errors.As(err, &de) {
		t.Fatalf("not a device error: %v", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "390 of 400 key generations failed: device generate x25519: CKR_DEVICE_ERROR (0x30)") ||
		strings.Count(msg, "CKR_DEVICE_ERROR") != 1 || strings.Contains(msg, "\n") || len(msg) > 200 {
		t.Fatalf("error of %d bytes: %q", len(msg), msg)
	}
	if n := len(be.keys); n != 0 {
		t.Fatalf("%d device keys left after the failed batch", n)
	}
}
