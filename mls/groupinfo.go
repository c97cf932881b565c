package mls

import "fmt"

// GroupContext is RFC 9420 §8.1's GroupContext.
type GroupContext struct {
	Version                 uint16
	CipherSuite             CipherSuite
	GroupID                 []byte
	Epoch                   uint64
	TreeHash                []byte
	ConfirmedTranscriptHash []byte
	Extensions              []Extension
}

func (gc *GroupContext) encode(w *Writer) {
	w.U16(gc.Version)
	w.U16(uint16(gc.CipherSuite))
	w.Vector(gc.GroupID)
	w.U64(gc.Epoch)
	w.Vector(gc.TreeHash)
	w.Vector(gc.ConfirmedTranscriptHash)
	encodeExtensions(w, gc.Extensions)
}

// Marshal returns the TLS encoding of the GroupContext.
func (gc *GroupContext) Marshal() []byte {
	w := NewWriter()
	gc.encode(w)
	return w.Bytes()
}

func decodeGroupContext(d *decoder) GroupContext {
	return GroupContext{
		Version:                 d.u16("GroupContext.version"),
		CipherSuite:             CipherSuite(d.u16("GroupContext.cipher_suite")),
		GroupID:                 d.vec("GroupContext.group_id"),
		Epoch:                   d.u64("GroupContext.epoch"),
		TreeHash:                d.vec("GroupContext.tree_hash"),
		ConfirmedTranscriptHash: d.vec("GroupContext.confirmed_transcript_hash"),
		Extensions:              decodeExtensions(d, "GroupContext.extensions"),
	}
}

// GroupInfo is RFC 9420 §12.4.3's GroupInfo.
type GroupInfo struct {
	GroupContext    GroupContext
	Extensions      []Extension
	ConfirmationTag []byte
	Signer          uint32
	Signature       []byte
}

func (gi *GroupInfo) encodeContent(w *Writer) {
	gi.GroupContext.encode(w)
	encodeExtensions(w, gi.Extensions)
	w.Vector(gi.ConfirmationTag)
	w.U32(gi.Signer)
}

func (gi *GroupInfo) encode(w *Writer) {
	gi.encodeContent(w)
	w.Vector(gi.Signature)
}

// Marshal returns the TLS encoding of the GroupInfo.
func (gi *GroupInfo) Marshal() []byte {
	w := NewWriter()
	gi.encode(w)
	return w.Bytes()
}

// TBS returns the encoded GroupInfoTBS.
func (gi *GroupInfo) TBS() []byte {
	w := NewWriter()
	gi.encodeContent(w)
	return w.Bytes()
}

func decodeGroupInfo(d *decoder) GroupInfo {
	return GroupInfo{
		GroupContext:    decodeGroupContext(d),
		Extensions:      decodeExtensions(d, "GroupInfo.extensions"),
		ConfirmationTag: d.vec("GroupInfo.confirmation_tag"),
		Signer:          d.u32("GroupInfo.signer"),
		Signature:       d.vec("GroupInfo.signature"),
	}
}

// UnmarshalGroupInfo decodes exactly one GroupInfo.
func UnmarshalGroupInfo(b []byte) (*GroupInfo, error) {
	d := newDecoder(b)
	gi := decodeGroupInfo(d)
	if err := d.finish("GroupInfo"); err != nil {
		return nil, err
	}
	return &gi, nil
}

// Verify checks the GroupInfoTBS signature with the signer's public key,
// which the caller takes from the ratchet tree leaf gi.Signer.
func (gi *GroupInfo) Verify(s *Suite, signerPub []byte) error {
	if gi.GroupContext.CipherSuite != s.ID {
		return fmt.Errorf("%w: cipher suite %v, expected %v", ErrInvalidGroupInfo, gi.GroupContext.CipherSuite, s.ID)
	}
	if err := s.VerifyWithLabel(signerPub, LabelGroupInfoTBS, gi.TBS(), gi.Signature); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidGroupInfo, err)
	}
	return nil
}
