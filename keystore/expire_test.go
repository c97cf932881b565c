package keystore

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExpireKeyPackages: the sweep destroys the keys of unused KeyPackages
// past their not_after, audits each, and keeps an expired last-resort
// KeyPackage until a newer one of the same owner, suite and identity
// exists.
func TestExpireKeyPackages(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	var audited []Event
	be := newFake()
	s, _ := openStore(t, be, Options{Now: now, OnEvent: func(e Event) {
		if strings.HasPrefix(e.Reason, expiredWhy) {
			mu.Lock()
			audited = append(audited, e)
			mu.Unlock()
		}
	}})
	t0 := now()
	sig, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519, Owner: "uid:1"})
	if err != nil {
		t.Fatal(err)
	}
	short := makeKPs(t, s, sig, "uid:1", 2, false, t0.Add(time.Hour), "alice")
	long := makeKPs(t, s, sig, "uid:1", 1, false, t0.Add(10*time.Hour), "alice")
	used := makeKPs(t, s, sig, "uid:1", 1, false, t0.Add(time.Hour), "alice")
	if _, err := s.UseInitKey(ctx, used[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	advance(time.Millisecond)
	lrAlice := makeKPs(t, s, sig, "uid:1", 1, true, t0.Add(time.Hour), "alice")
	lrBob := makeKPs(t, s, sig, "uid:1", 1, true, t0.Add(time.Hour), "bob")

	if n, err := s.ExpireKeyPackages(ctx); err != nil || n != 0 {
		t.Fatalf("before any lifetime ended: expired %d, %v", n, err)
	}
	advance(2 * time.Hour)
	n, err := s.ExpireKeyPackages(ctx)
	if err != nil || n != 2 {
		t.Fatalf("expired %d KeyPackages, %v; want the 2 short-lived ones", n, err)
	}
	for _, r := range short {
		got, _ := s.Get(r.ID)
		if got.State != StateDestroyed || be.has(r.ID) {
			t.Fatalf("expired init key %s: state %s, on device %v", r.ID, got.State, be.has(r.ID))
		}
	}
	if len(audited) != 4 {
		t.Fatalf("%d destructions reported, want 4 (2 init and 2 leaf keys)", len(audited))
	}
	for _, r := range append(append(long, lrAlice...), lrBob...) {
		if got, _ := s.Get(r.ID); !got.Live() || !be.has(r.ID) {
			t.Fatalf("key %s (last resort %v) should be kept: %s", r.ID, r.LastResort, got.State)
		}
	}
	if reg, lr := unused(t, s, "uid:1"); reg != 1 || lr != 2 {
		t.Fatalf("unused: %d regular, %d last resort; want 1 and 2", reg, lr)
	}

	// A newer last-resort KeyPackage for alice replaces the expired one.
	advance(time.Millisecond)
	makeKPs(t, s, sig, "uid:1", 1, true, now().Add(100*time.Hour), "alice")
	if n, err := s.Sweep(ctx); err != nil {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	if got, _ := s.Get(lrAlice[0].ID); got.Live() || be.has(lrAlice[0].ID) {
		t.Fatalf("replaced last-resort KeyPackage kept: %s", got.State)
	}
	if got, _ := s.Get(lrBob[0].ID); !got.Live() {
		t.Fatalf("bob's only last-resort KeyPackage retired: %s", got.State)
	}
	if reg, lr := unused(t, s, "uid:1"); reg != 1 || lr != 2 {
		t.Fatalf("unused: %d regular, %d last resort; want 1 and 2 (bob's and alice's new one)", reg, lr)
	}
}
