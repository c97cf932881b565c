package keystore

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
)

// panicAt is a device whose n-th generation panics, as a buggy device
// library might.
type panicAt struct {
	*fakeBackend
	n     int32
	calls atomic.Int32
}

func (p *panicAt) Generate(ctx context.Context, id string, alg Algorithm) ([]byte, []byte, error) {
	if p.calls.Add(1) == p.n {
		var m map[string]int
		m["secret"]++ // a nil-map write: a runtime panic, not a panic(err) of ours
	}
	return p.fakeBackend.Generate(ctx, id, alg)
}

func TestWorkerPanicFailsTheBatchNotTheDaemon(t *testing.T) {
	be := &panicAt{fakeBackend: newFake(), n: 5}
	var logs bytes.Buffer
	s, _ := openStore(t, be, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	specs := make([]KeySpec, 20)
	for i := range specs {
		specs[i] = KeySpec{Role: RoleInit, Algorithm: X25519}
	}
	_, err := s.NewBatch().Generate(context.Background(), specs)
	if !errors.Is(err, ErrInternal) {
		t.Fatalf("batch with a panicking generation: %v", err)
	}
	if msg := err.Error(); strings.Contains(msg, "nil map") || strings.Contains(msg, "\n") {
		t.Fatalf("the caller's error carries the panic: %q", msg)
	}
	if n := len(be.keys); n != 0 {
		t.Fatalf("%d device keys left after the failed batch", n)
	}
	if !strings.Contains(logs.String(), `"msg":"worker panic"`) || !strings.Contains(logs.String(), "nil map") {
		t.Fatalf("the panic is not in the log: %s", logs.String())
	}
	// The store goes on serving.
	if _, err := s.NewBatch().Generate(context.Background(), specs[:3]); err != nil {
		t.Fatalf("next batch: %v", err)
	}
}
