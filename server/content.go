package server

import (
	"context"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// checkContent is strict content mode: what a signature key signs must be
// the RFC 9420 structure its label names, and a LeafNode or KeyPackage must
// carry this very key as its signature_key. The key then signs MLS
// messages only, never arbitrary bytes that another protocol could
// accept. A refusal is audited as denied.
func checkContent(ctx context.Context, r *keystore.Record, label string, content []byte) error {
	err := mlsops.CheckContent(r, label, content)
	if err != nil {
		noteDenied(ctx, "strict content: "+err.Error())
		return invalid("content", "strict content mode: %v", err)
	}
	return nil
}
