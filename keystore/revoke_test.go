package keystore

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
)

// fakeRevoker gives every X25519 key a revocation of its own, as the TPM
// backend gives its ECDH keys an NV bit, and records what it is told.
type fakeRevoker struct {
	*fakeBackend
	mu       sync.Mutex
	revoked  map[string]int // revocation -> Revoke calls
	reserved []string
}

func (f *fakeRevoker) Revocation(ref []byte) []byte {
	if k, err := f.key(ref); err != nil || k.alg != X25519 {
		return nil
	}
	return append([]byte("rev:"), ref...)
}

func (f *fakeRevoker) Revoke(_ context.Context, rev []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked[string(rev)]++
	return nil
}

func (f *fakeRevoker) Reserve(_ context.Context, _ string, revs [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved = f.reserved[:0]
	for _, r := range revs {
		f.reserved = append(f.reserved, string(r))
	}
	slices.Sort(f.reserved)
	return nil
}

func (f *fakeRevoker) Reclaim(context.Context) ([]string, error) { return nil, nil }
func (f *fakeRevoker) RevocationNote() string                    { return "" }
func (f *fakeRevoker) RevokesSignatureKeys() bool                { return false }

// TestRevocationsReadTheIndexes: start-up tells the device every
// revocation the catalog holds (active keys' from idx-check, retired ones'
// from idx-revoke) and revokes the retired ones again; the sweep revokes
// each retired key once per process; idx-revoke holds exactly the retired
// keys with a revocation, as a rebuild from the records does.
func TestRevocationsReadTheIndexes(t *testing.T) {
	ctx := context.Background()
	be := &fakeRevoker{fakeBackend: newFake(), revoked: map[string]int{}}
	s, path := openStore(t, be, Options{})
	var inits []*Record
	for range 4 {
		r, err := s.Create(ctx, KeySpec{Role: RoleInit, Suite: 1, Algorithm: X25519})
		if err != nil {
			t.Fatal(err)
		}
		inits = append(inits, r)
	}
	if _, err := s.Create(ctx, KeySpec{Role: RoleSignature, Suite: 1, Algorithm: Ed25519}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseInitKey(ctx, inits[0].ID, func(any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Delete(ctx, inits[1].ID, false); err != nil {
		t.Fatal(err)
	}
	rev := func(r *Record) string { return "rev:" + string(r.DeviceRef) }
	owed := map[string]string{}
	if err := s.cat.owedRevocations(func(id string, r []byte) error { owed[id] = string(r); return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{inits[0].ID: rev(inits[0]), inits[1].ID: rev(inits[1])}
	if !maps.Equal(owed, want) {
		t.Fatalf("idx-revoke holds %v, want the consumed and the deleted key: %v", owed, want)
	}
	checkIndexesMatchARebuild(t, s)
	s.Close()

	be.revoked = map[string]int{}
	s, err := Open(ctx, path, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantReserved := []string{rev(inits[0]), rev(inits[1]), rev(inits[2]), rev(inits[3])}
	slices.Sort(wantReserved)
	if !slices.Equal(be.reserved, wantReserved) {
		t.Errorf("start-up reserved %q, want every init key's %q", be.reserved, wantReserved)
	}
	if !maps.Equal(be.revoked, map[string]int{rev(inits[0]): 1, rev(inits[1]): 1}) {
		t.Errorf("start-up revoked %v, want the two retired keys once", be.revoked)
	}
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(be.revoked, map[string]int{rev(inits[0]): 1, rev(inits[1]): 1}) {
		t.Errorf("after a sweep: revoked %v, want no second Revoke", be.revoked)
	}
}
