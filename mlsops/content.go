package mlsops

import (
	"bytes"
	"fmt"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

// CheckContent is strict content mode's test: what a signature key signs
// must be the RFC 9420 structure its label names, and a LeafNode or
// KeyPackage must carry this very key as its signature_key.
func CheckContent(r *keystore.Record, label string, content []byte) error {
	suite := mls.CipherSuite(r.Suite)
	switch label {
	case mls.LabelLeafNodeTBS:
		ln, err := mls.ParseLeafNodeTBS(content)
		if err != nil {
			return fmt.Errorf("not a LeafNodeTBS: %w", err)
		}
		if !bytes.Equal(ln.SignatureKey, r.PublicKey) {
			return fmt.Errorf("the LeafNodeTBS carries another signature key")
		}
	case mls.LabelKeyPackageTBS:
		kp, err := mls.ParseKeyPackageTBS(content)
		if err != nil {
			return fmt.Errorf("not a KeyPackageTBS: %w", err)
		}
		if kp.CipherSuite != suite {
			return fmt.Errorf("the KeyPackageTBS is for cipher suite %v, the key for %v", kp.CipherSuite, suite)
		}
		if !bytes.Equal(kp.LeafNode.SignatureKey, r.PublicKey) {
			return fmt.Errorf("the KeyPackageTBS carries another signature key")
		}
	case mls.LabelGroupInfoTBS:
		gi, err := mls.ParseGroupInfoTBS(content)
		if err != nil {
			return fmt.Errorf("not a GroupInfoTBS: %w", err)
		}
		if gi.GroupContext.CipherSuite != suite {
			return fmt.Errorf("the GroupInfoTBS is for cipher suite %v, the key for %v", gi.GroupContext.CipherSuite, suite)
		}
	case mls.LabelFramedContentTBS:
		fc, err := mls.ParseFramedContentTBS(content)
		if err != nil {
			return fmt.Errorf("not a FramedContentTBS: %w", err)
		}
		if fc.Context != nil && fc.Context.CipherSuite != suite {
			return fmt.Errorf("the FramedContentTBS's group context is for cipher suite %v, the key for %v", fc.Context.CipherSuite, suite)
		}
	}
	return nil
}
