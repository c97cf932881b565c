package bench

import (
	"crypto/rand"
	"fmt"

	"github.com/mlskeyd/mlskeyd/mls"
)

// FramedContentTBS returns a well-formed FramedContentTBS of an
// application message (200 bytes of data) in a member's group of suite:
// what an MLS engine has signed for every message, and what strict content
// mode accepts.
func FramedContentTBS(su *mls.Suite) []byte {
	h := su.HashSize()
	gc := mls.GroupContext{Version: 1, CipherSuite: su.ID, GroupID: []byte("bench group"), Epoch: 5,
		TreeHash: make([]byte, h), ConfirmedTranscriptHash: make([]byte, h)}
	return (&mls.FramedContentTBS{Version: 1, WireFormat: 1, Context: &gc, Content: mls.FramedContent{
		GroupID: gc.GroupID, Epoch: gc.Epoch, Sender: mls.Sender{Type: mls.SenderTypeMember, LeafIndex: 1},
		ContentType: 1, ApplicationData: make([]byte, 200)}}).Marshal()
}

// Welcome returns an MLSMessage holding a Welcome of suite with one entry,
// for the KeyPackage ref whose init key is initPub, and an encrypted
// GroupInfo that opens with its joiner secret (no PSKs). The GroupInfo is
// not signed and the group has no ratchet tree: it is a Welcome to open,
// not a group to join, which is all a benchmark of OpenWelcome needs.
func Welcome(su *mls.Suite, ref, initPub []byte) ([]byte, error) {
	h := su.HashSize()
	joiner := make([]byte, h)
	rand.Read(joiner)
	gi := mls.GroupInfo{
		GroupContext: mls.GroupContext{Version: 1, CipherSuite: su.ID, GroupID: []byte("bench group"), Epoch: 1,
			TreeHash: make([]byte, h), ConfirmedTranscriptHash: make([]byte, h)},
		ConfirmationTag: make([]byte, h),
	}
	member, err := su.Extract(joiner, make([]byte, h))
	if err != nil {
		return nil, err
	}
	ws, err := su.DeriveSecret(member, "welcome")
	if err != nil {
		return nil, err
	}
	key, err := su.ExpandWithLabel(ws, "key", nil, su.AEADKeySize())
	if err != nil {
		return nil, err
	}
	nonce, err := su.ExpandWithLabel(ws, "nonce", nil, su.AEADNonceSize())
	if err != nil {
		return nil, err
	}
	aead, err := su.NewAEAD(key)
	if err != nil {
		return nil, err
	}
	w := &mls.Welcome{CipherSuite: su.ID, EncryptedGroupInfo: aead.Seal(nil, nonce, gi.Marshal(), nil)}
	gs := (&mls.GroupSecrets{JoinerSecret: joiner}).Marshal()
	kem, ct, err := su.EncryptWithLabel(initPub, mls.LabelWelcome, w.EncryptedGroupInfo, gs)
	if err != nil {
		return nil, fmt.Errorf("encrypt group secrets: %w", err)
	}
	w.Secrets = []mls.EncryptedGroupSecrets{{NewMember: ref, KEMOutput: kem, Ciphertext: ct}}
	return mls.WelcomeMessage(w), nil
}
