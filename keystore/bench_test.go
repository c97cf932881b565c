package keystore

import (
	"context"
	"testing"
)

// BenchmarkCreate measures one committed key on the in-memory device: the
// catalog's own cost (the journal commit before the device, the record
// commit after it), each an fsync of the bbolt file.
func BenchmarkCreate(b *testing.B) {
	s, _ := openStore(b, newFake(), Options{})
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.Create(ctx, KeySpec{Role: RoleSignature, Algorithm: Ed25519}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatch100 is a batch of 100 keys, as CreateKeyPackages makes for
// 50 KeyPackages.
func BenchmarkBatch100(b *testing.B) {
	s, _ := openStore(b, newFake(), Options{})
	ctx := context.Background()
	specs := make([]KeySpec, 100)
	for i := range specs {
		specs[i] = KeySpec{Role: RoleInit, Algorithm: X25519}
	}
	for b.Loop() {
		bt := s.NewBatch()
		if _, err := bt.Generate(ctx, specs); err != nil {
			b.Fatal(err)
		}
		if err := bt.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
