package mls

import "fmt"

// Strict content mode.
//
// A signing key that signs whatever bytes it is handed under a label is a
// signing oracle. The Parse*TBS functions below let the daemon check that
// the content passed to SignWithLabel really is the structure RFC 9420
// signs under that label:
//
//	"LeafNodeTBS"      ParseLeafNodeTBS / UnmarshalLeafNodeTBS
//	"KeyPackageTBS"    ParseKeyPackageTBS
//	"GroupInfoTBS"     ParseGroupInfoTBS
//	"FramedContentTBS" ParseFramedContentTBS
//
// Each consumes the whole input (trailing bytes are an error), bounds every
// length by the input, never panics, and returns errors that wrap
// ErrMalformed and name the failing field. Accepted input re-encodes
// byte-exactly with the matching Marshal method.
//
// Version policy: the protocol version fields of the structure being signed
// must be mls10 — FramedContentTBS.version and the GroupContext it carries,
// KeyPackageTBS.version, and GroupInfoTBS.group_context.version. Any other
// value is rejected with an error wrapping both ErrMalformed and
// ErrUnsupportedVersion (the layout after the version is only defined for
// mls10). Structures nested deeper (a KeyPackage inside an Add proposal, the
// target version of a ReInit) are checked for syntax only, as
// UnmarshalProposal and UnmarshalCommit do.

// Sender types (§6).
const (
	SenderTypeMember            uint8 = 1
	SenderTypeExternal          uint8 = 2
	SenderTypeNewMemberProposal uint8 = 3
	SenderTypeNewMemberCommit   uint8 = 4
)

// Content types (§6).
const (
	ContentTypeApplication uint8 = 1
	ContentTypeProposal    uint8 = 2
	ContentTypeCommit      uint8 = 3
)

// Sender is RFC 9420 §6's Sender. LeafIndex is used for member senders and
// SenderIndex for external senders; the other types carry no index.
type Sender struct {
	Type        uint8
	LeafIndex   uint32
	SenderIndex uint32
}

func (s *Sender) encode(w *Writer) {
	w.U8(s.Type)
	switch s.Type {
	case SenderTypeMember:
		w.U32(s.LeafIndex)
	case SenderTypeExternal:
		w.U32(s.SenderIndex)
	}
}

func decodeSender(d *decoder) Sender {
	var s Sender
	s.Type = d.u8("Sender.sender_type")
	switch {
	case d.err != nil:
	case s.Type == SenderTypeMember:
		s.LeafIndex = d.u32("Sender.leaf_index")
	case s.Type == SenderTypeExternal:
		s.SenderIndex = d.u32("Sender.sender_index")
	case s.Type == SenderTypeNewMemberProposal, s.Type == SenderTypeNewMemberCommit:
	default:
		d.failf("Sender.sender_type", "invalid value %d", s.Type)
	}
	return s
}

// FramedContent is RFC 9420 §6's FramedContent. The field selected by
// ContentType holds the body: ApplicationData, Proposal or Commit.
type FramedContent struct {
	GroupID           []byte
	Epoch             uint64
	Sender            Sender
	AuthenticatedData []byte
	ContentType       uint8
	ApplicationData   []byte
	Proposal          *Proposal
	Commit            *Commit
}

func (fc *FramedContent) encode(w *Writer) {
	w.Vector(fc.GroupID)
	w.U64(fc.Epoch)
	fc.Sender.encode(w)
	w.Vector(fc.AuthenticatedData)
	w.U8(fc.ContentType)
	switch fc.ContentType {
	case ContentTypeApplication:
		w.Vector(fc.ApplicationData)
	case ContentTypeProposal:
		p := fc.Proposal
		if p == nil {
			p = &Proposal{}
		}
		p.encode(w)
	case ContentTypeCommit:
		c := fc.Commit
		if c == nil {
			c = &Commit{}
		}
		c.encode(w)
	}
}

// Marshal returns the TLS encoding of the FramedContent.
func (fc *FramedContent) Marshal() []byte {
	w := NewWriter()
	fc.encode(w)
	return w.Bytes()
}

func decodeFramedContent(d *decoder) FramedContent {
	var fc FramedContent
	fc.GroupID = d.vec("FramedContent.group_id")
	fc.Epoch = d.u64("FramedContent.epoch")
	if d.err == nil {
		fc.Sender = decodeSender(d)
	}
	fc.AuthenticatedData = d.vec("FramedContent.authenticated_data")
	fc.ContentType = d.u8("FramedContent.content_type")
	switch {
	case d.err != nil:
	case fc.ContentType == ContentTypeApplication:
		fc.ApplicationData = d.vec("FramedContent.application_data")
	case fc.ContentType == ContentTypeProposal:
		p := decodeProposal(d)
		fc.Proposal = &p
	case fc.ContentType == ContentTypeCommit:
		c := decodeCommit(d)
		fc.Commit = &c
	default:
		d.failf("FramedContent.content_type", "invalid value %d", fc.ContentType)
	}
	return fc
}

// UnmarshalFramedContent decodes exactly one FramedContent.
func UnmarshalFramedContent(b []byte) (*FramedContent, error) {
	d := newDecoder(b)
	fc := decodeFramedContent(d)
	if err := d.finish("FramedContent"); err != nil {
		return nil, err
	}
	return &fc, nil
}

// FramedContentTBS is RFC 9420 §6.1's FramedContentTBS. Context is present
// exactly when the sender is a member or a new_member_commit sender.
type FramedContentTBS struct {
	Version    uint16
	WireFormat uint16
	Content    FramedContent
	Context    *GroupContext
}

// hasGroupContext reports whether FramedContentTBS carries the GroupContext
// for this sender type (§6.1).
func hasGroupContext(senderType uint8) bool {
	return senderType == SenderTypeMember || senderType == SenderTypeNewMemberCommit
}

// Marshal returns the TLS encoding of the FramedContentTBS. For member and
// new_member_commit senders a nil Context encodes as a zero GroupContext.
func (t *FramedContentTBS) Marshal() []byte {
	w := NewWriter()
	w.U16(t.Version)
	w.U16(t.WireFormat)
	t.Content.encode(w)
	if hasGroupContext(t.Content.Sender.Type) {
		gc := t.Context
		if gc == nil {
			gc = &GroupContext{}
		}
		gc.encode(w)
	}
	return w.Bytes()
}

// requireMLS10 fails with an error wrapping ErrMalformed and
// ErrUnsupportedVersion unless v is mls10.
func (d *decoder) requireMLS10(field string, v uint16) {
	if d.err == nil && v != ProtocolVersionMLS10 {
		d.fail(field, fmt.Errorf("%w: %w %d (only mls10 is accepted)", ErrMalformed, ErrUnsupportedVersion, v))
	}
}

// ParseFramedContentTBS parses FramedContentTBS (§6.1): version (must be
// mls10), wire_format (public_message or private_message), FramedContent,
// and, for member and new_member_commit senders, the GroupContext (whose
// version must also be mls10).
func ParseFramedContentTBS(b []byte) (*FramedContentTBS, error) {
	d := newDecoder(b)
	var t FramedContentTBS
	t.Version = d.u16("FramedContentTBS.version")
	d.requireMLS10("FramedContentTBS.version", t.Version)
	t.WireFormat = d.u16("FramedContentTBS.wire_format")
	if d.err == nil && t.WireFormat != WireFormatPublicMessage && t.WireFormat != WireFormatPrivateMessage {
		d.failf("FramedContentTBS.wire_format", "wire format %d is not public_message or private_message", t.WireFormat)
	}
	if d.err == nil {
		t.Content = decodeFramedContent(d)
	}
	if d.err == nil && hasGroupContext(t.Content.Sender.Type) {
		gc := decodeGroupContext(d)
		d.requireMLS10("GroupContext.version", gc.Version)
		t.Context = &gc
	}
	if err := d.finish("FramedContentTBS"); err != nil {
		return nil, err
	}
	return &t, nil
}

// LeafNodeTBS is RFC 9420 §7.2's LeafNodeTBS: the LeafNode without its
// signature and, for the update and commit sources, the group_id and
// leaf_index it is bound to. LeafNode.Signature is always nil.
type LeafNodeTBS struct {
	LeafNode  LeafNode
	GroupID   []byte
	LeafIndex uint32
}

// Marshal returns the TLS encoding of the LeafNodeTBS.
func (t *LeafNodeTBS) Marshal() []byte {
	return t.LeafNode.TBS(t.GroupID, t.LeafIndex)
}

// decodeLeafNodeContent reads the LeafNode fields covered by the signature,
// in the order LeafNode.encodeContent writes them; decodeLeafNode adds the
// signature.
func decodeLeafNodeContent(d *decoder) LeafNode {
	var ln LeafNode
	ln.EncryptionKey = d.vec("LeafNode.encryption_key")
	ln.SignatureKey = d.vec("LeafNode.signature_key")
	if d.err == nil {
		ln.Credential = decodeCredential(d)
	}
	if d.err == nil {
		ln.Capabilities = decodeCapabilities(d)
	}
	ln.Source = d.u8("LeafNode.leaf_node_source")
	switch {
	case d.err != nil:
	case ln.Source == LeafNodeSourceKeyPackage:
		ln.Lifetime = &Lifetime{NotBefore: d.u64("Lifetime.not_before"), NotAfter: d.u64("Lifetime.not_after")}
	case ln.Source == LeafNodeSourceUpdate:
	case ln.Source == LeafNodeSourceCommit:
		ln.ParentHash = d.vec("LeafNode.parent_hash")
	default:
		d.failf("LeafNode.leaf_node_source", "invalid value %d", ln.Source)
	}
	ln.Extensions = decodeExtensions(d, "LeafNode.extensions")
	return ln
}

// UnmarshalLeafNodeTBS parses LeafNodeTBS (§7.2) including the group_id and
// leaf_index of update and commit leaves.
func UnmarshalLeafNodeTBS(b []byte) (*LeafNodeTBS, error) {
	d := newDecoder(b)
	var t LeafNodeTBS
	t.LeafNode = decodeLeafNodeContent(d)
	if d.err == nil && (t.LeafNode.Source == LeafNodeSourceUpdate || t.LeafNode.Source == LeafNodeSourceCommit) {
		t.GroupID = d.vec("LeafNodeTBS.group_id")
		t.LeafIndex = d.u32("LeafNodeTBS.leaf_index")
	}
	if err := d.finish("LeafNodeTBS"); err != nil {
		return nil, err
	}
	return &t, nil
}

// ParseLeafNodeTBS parses LeafNodeTBS (§7.2) and returns the LeafNode with a
// nil Signature. Use UnmarshalLeafNodeTBS for the group_id and leaf_index.
func ParseLeafNodeTBS(b []byte) (*LeafNode, error) {
	t, err := UnmarshalLeafNodeTBS(b)
	if err != nil {
		return nil, err
	}
	return &t.LeafNode, nil
}

// ParseKeyPackageTBS parses KeyPackageTBS (§10): version (must be mls10),
// cipher_suite, init_key, leaf_node (a complete, signed LeafNode) and
// extensions. The returned KeyPackage has a nil Signature; kp.TBS()
// re-encodes the input.
func ParseKeyPackageTBS(b []byte) (*KeyPackage, error) {
	d := newDecoder(b)
	var kp KeyPackage
	kp.Version = d.u16("KeyPackageTBS.version")
	d.requireMLS10("KeyPackageTBS.version", kp.Version)
	kp.CipherSuite = CipherSuite(d.u16("KeyPackageTBS.cipher_suite"))
	kp.InitKey = d.vec("KeyPackageTBS.init_key")
	if d.err == nil {
		kp.LeafNode = decodeLeafNode(d)
	}
	kp.Extensions = decodeExtensions(d, "KeyPackageTBS.extensions")
	if err := d.finish("KeyPackageTBS"); err != nil {
		return nil, err
	}
	return &kp, nil
}

// ParseGroupInfoTBS parses GroupInfoTBS (§12.4.3): group_context (version
// must be mls10), extensions, confirmation_tag and signer. The returned
// GroupInfo has a nil Signature; gi.TBS() re-encodes the input.
func ParseGroupInfoTBS(b []byte) (*GroupInfo, error) {
	d := newDecoder(b)
	var gi GroupInfo
	gi.GroupContext = decodeGroupContext(d)
	d.requireMLS10("GroupContext.version", gi.GroupContext.Version)
	gi.Extensions = decodeExtensions(d, "GroupInfoTBS.extensions")
	gi.ConfirmationTag = d.vec("GroupInfoTBS.confirmation_tag")
	gi.Signer = d.u32("GroupInfoTBS.signer")
	if err := d.finish("GroupInfoTBS"); err != nil {
		return nil, err
	}
	return &gi, nil
}
