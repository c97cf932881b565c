package keystore

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

// panicList is a device whose listing panics once armed: the sweep lists
// the device each time it runs.
type panicList struct {
	*fakeBackend
	armed atomic.Bool
}

func (p *panicList) List(ctx context.Context) ([]DeviceKey, error) {
	if p.armed.Load() {
		panic("listing failed")
	}
	return p.fakeBackend.List(ctx)
}

// TestSweepPanicIsLoggedAndRetried: a panic in the background sweep is
// logged, the sweep runs again at its next tick, and the store goes on
// serving.
func TestSweepPanicIsLoggedAndRetried(t *testing.T) {
	be := &panicList{fakeBackend: newFake()}
	logs := new(lockedBuffer)
	s, _ := openStore(t, be, Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	be.armed.Store(true)
	s.StartSweeper(time.Millisecond)
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(logs.String(), `"msg":"worker panic"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the sweep did not panic twice within 30 s: %s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `"in":"sweep"`) {
		t.Fatalf("the log does not say where: %s", logs.String())
	}
	if _, err := s.Create(context.Background(), KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519}); err != nil {
		t.Fatalf("after the sweep's panics: %v", err)
	}
}

// lockedBuffer is a bytes.Buffer for a logger written from goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
