package keystore

import (
	"context"
	"testing"
)

func TestByKeyPackageRefs(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, newFake(), Options{})
	b := s.NewBatch()
	recs, err := b.Generate(ctx, []KeySpec{{Role: RoleInit, Algorithm: X25519}, {Role: RoleInit, Algorithm: X25519}})
	if err != nil {
		t.Fatal(err)
	}
	recs[0].KeyPackageRef, recs[1].KeyPackageRef = []byte{1}, []byte{2}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := s.ByKeyPackageRefs([][]byte{{9}, {2}, {1}, {}})
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != nil || got[3] != nil || got[1] == nil || got[1].ID != recs[1].ID || got[2] == nil || got[2].ID != recs[0].ID {
		t.Fatalf("look-up: %v", got)
	}
}
