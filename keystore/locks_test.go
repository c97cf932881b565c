package keystore

import (
	"context"
	"crypto"
	"errors"
	"runtime"
	"testing"
)

// blockingSign holds Sign inside the device until released.
type blockingSign struct {
	*fakeBackend
	entered, release chan struct{}
}

func (b *blockingSign) Sign(ctx context.Context, ref []byte, alg Algorithm, msg []byte) ([]byte, error) {
	b.entered <- struct{}{}
	<-b.release
	return b.fakeBackend.Sign(ctx, ref, alg, msg)
}

// waiters reports how many callers hold or wait for id's lock.
func (l *keyLocks) waiters(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := l.m[id]; k != nil {
		return k.refs
	}
	return 0
}

// A signature that started before Delete finishes before the deletion
// commits; one that starts after it fails.
func TestDeleteWaitsForOperationsInProgress(t *testing.T) {
	ctx := context.Background()
	be := &blockingSign{fakeBackend: newFake(), entered: make(chan struct{}), release: make(chan struct{})}
	s, _ := openStore(t, be, Options{})
	r, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	signed := make(chan error, 1)
	go func() {
		defer s.Share(r.ID)()
		sg, err := s.Signer(ctx, r.ID)
		if err == nil {
			_, err = sg.Sign(nil, []byte("content"), crypto.Hash(0))
		}
		signed <- err
	}()
	<-be.entered
	deleted := make(chan error, 1)
	go func() {
		_, _, err := s.Delete(ctx, r.ID, false)
		deleted <- err
	}()
	// Delete is queued behind the signature once the lock has two users.
	for s.locks.waiters(r.ID) < 2 {
		runtime.Gosched()
	}
	select {
	case err := <-deleted:
		t.Fatalf("Delete returned (%v) while a signature was in the device", err)
	default:
	}
	if got, _ := s.Get(r.ID); got.State != StateActive {
		t.Fatalf("deletion committed during a signature: %s", got.State)
	}
	close(be.release)
	if err := <-signed; err != nil {
		t.Fatalf("signature that started before Delete: %v", err)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	release := s.Share(r.ID)
	defer release()
	if _, err := s.Signer(ctx, r.ID); !errors.Is(err, ErrNotActive) {
		t.Fatalf("signer after Delete: %v", err)
	}
}
