package tpm

import (
	"context"
	"encoding/hex"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var _ keystore.Identifier = (*Backend)(nil)

// Identity is the Name of the storage root key. The SRK is derived from the
// owner hierarchy's seed, and every key blob in the catalog loads only
// under it, so the Name says exactly whether this TPM can use the catalog's
// keys: it changes with another TPM and with TPM2_Clear, and stays the same
// across reboots, firmware updates and swtpm restarts. It is public (the
// hash of the SRK's public area) and identifies nothing beyond that.
func (b *Backend) Identity(ctx context.Context) (string, error) {
	var name []byte
	err := b.do(ctx, "identity", func() error {
		name = append([]byte(nil), b.srk.Name.Buffer...)
		return nil
	})
	if err != nil {
		return "", err
	}
	return "srk:" + hex.EncodeToString(name), nil
}
