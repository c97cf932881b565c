package mlsops

import (
	"context"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

// SignWithLabel signs content under label (RFC 9420 §5.1.2) with the
// signature key r, which the caller has read and checked with Usable.
func SignWithLabel(ctx context.Context, store *keystore.Store, r *keystore.Record, label string, content []byte) ([]byte, error) {
	signer, err := store.SignerFor(ctx, r)
	if err != nil {
		return nil, err
	}
	su, err := mls.LookupSuite(mls.CipherSuite(r.Suite))
	if err != nil {
		return nil, err
	}
	return su.SignWithLabel(signer, label, content)
}
