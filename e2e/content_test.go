package e2e

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/mlskeyd/mlskeyd/mls"
)

// tbs builds a well-formed RFC 9420 structure for a signature label, as an
// MLS engine would hand it to the daemon: strict content mode signs
// nothing else. LeafNodeTBS and KeyPackageTBS carry sigPub, the signing
// key's own public key. data varies the content.
func tbs(t testing.TB, label string, suite uint16, sigPub []byte, data string) []byte {
	t.Helper()
	su, err := mls.LookupSuite(mls.CipherSuite(suite))
	if err != nil {
		t.Fatal(err)
	}
	h := su.HashSize()
	gc := mls.GroupContext{Version: 1, CipherSuite: su.ID, GroupID: []byte("group " + data), Epoch: 5,
		TreeHash: make([]byte, h), ConfirmedTranscriptHash: make([]byte, h)}
	hpkeKey := func() []byte { return hpkePub(t, su) }
	leaf := mls.LeafNode{
		EncryptionKey: hpkeKey(), SignatureKey: sigPub,
		Credential:   mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte(data)},
		Capabilities: mls.Capabilities{Versions: []uint16{1}, CipherSuites: []uint16{suite}, Credentials: []uint16{1}},
		Source:       mls.LeafNodeSourceKeyPackage, Lifetime: &mls.Lifetime{NotBefore: 0, NotAfter: 1 << 40},
	}
	switch label {
	case mls.LabelFramedContentTBS:
		return (&mls.FramedContentTBS{Version: 1, WireFormat: 1, Context: &gc, Content: mls.FramedContent{
			GroupID: gc.GroupID, Epoch: gc.Epoch, Sender: mls.Sender{Type: mls.SenderTypeMember, LeafIndex: 1},
			ContentType: 1, ApplicationData: []byte(data)}}).Marshal()
	case mls.LabelGroupInfoTBS:
		return (&mls.GroupInfo{GroupContext: gc, ConfirmationTag: make([]byte, h), Signer: 1}).TBS()
	case mls.LabelLeafNodeTBS:
		return leaf.TBS(nil, 0)
	case mls.LabelKeyPackageTBS:
		leaf.Signature = make([]byte, 64)
		return (&mls.KeyPackage{Version: 1, CipherSuite: su.ID, InitKey: hpkeKey(), LeafNode: leaf}).TBS()
	}
	t.Fatalf("no TBS for label %q", label)
	return nil
}

// hpkePub returns some valid HPKE public key of the suite.
func hpkePub(t testing.TB, su *mls.Suite) []byte {
	t.Helper()
	switch su.KEMAlgorithm {
	case "x25519":
		b := make([]byte, 32)
		rand.Read(b)
		return b
	case "x448":
		b := make([]byte, 56)
		rand.Read(b)
		return b
	}
	// NIST: use the generator-derived key of a random scalar via ecdh.
	return nistPub(t, su.KEMAlgorithm)
}

func nistPub(t testing.TB, alg string) []byte {
	t.Helper()
	var c ecdh.Curve
	switch alg {
	case "ecdh-p256":
		c = ecdh.P256()
	case "ecdh-p384":
		c = ecdh.P384()
	default:
		c = ecdh.P521()
	}
	k, err := c.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}
