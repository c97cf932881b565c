package mls

// Proposal types (RFC 9420 §12.1, §17.4).
const (
	ProposalTypeAdd                    uint16 = 1
	ProposalTypeUpdate                 uint16 = 2
	ProposalTypeRemove                 uint16 = 3
	ProposalTypePSK                    uint16 = 4
	ProposalTypeReInit                 uint16 = 5
	ProposalTypeExternalInit           uint16 = 6
	ProposalTypeGroupContextExtensions uint16 = 7
)

// ReInit is the body of a reinit proposal (§12.1.5). Version is the
// protocol version of the new group, so it is not restricted to mls10.
type ReInit struct {
	GroupID     []byte
	Version     uint16
	CipherSuite CipherSuite
	Extensions  []Extension
}

// Proposal is RFC 9420 §12.1's Proposal. Exactly the field selected by Type
// is meaningful:
//
//	add(1)                      Add        (the KeyPackage, signature included)
//	update(2)                   Update     (the LeafNode, signature included)
//	remove(3)                   Removed    (leaf index)
//	psk(4)                      PSK
//	reinit(5)                   ReInit
//	external_init(6)            KEMOutput
//	group_context_extensions(7) Extensions
//
// RFC 9420 gives the bodies of other proposal types no length prefix, so a
// decoder cannot skip them: an unknown proposal type is a decode error
// (wrapping ErrMalformed), never silently accepted. A nil pointer for the
// selected body encodes as that body's zero value.
type Proposal struct {
	Type       uint16
	Add        *KeyPackage
	Update     *LeafNode
	Removed    uint32
	PSK        *PreSharedKeyID
	ReInit     *ReInit
	KEMOutput  []byte
	Extensions []Extension
}

func (p *Proposal) encode(w *Writer) {
	w.U16(p.Type)
	switch p.Type {
	case ProposalTypeAdd:
		kp := p.Add
		if kp == nil {
			kp = &KeyPackage{}
		}
		kp.encode(w)
	case ProposalTypeUpdate:
		ln := p.Update
		if ln == nil {
			ln = &LeafNode{}
		}
		ln.encode(w)
	case ProposalTypeRemove:
		w.U32(p.Removed)
	case ProposalTypePSK:
		psk := p.PSK
		if psk == nil {
			psk = &PreSharedKeyID{}
		}
		psk.encode(w)
	case ProposalTypeReInit:
		ri := p.ReInit
		if ri == nil {
			ri = &ReInit{}
		}
		w.Vector(ri.GroupID)
		w.U16(ri.Version)
		w.U16(uint16(ri.CipherSuite))
		encodeExtensions(w, ri.Extensions)
	case ProposalTypeExternalInit:
		w.Vector(p.KEMOutput)
	case ProposalTypeGroupContextExtensions:
		encodeExtensions(w, p.Extensions)
	}
}

// Marshal returns the TLS encoding of the Proposal (proposal_type and body).
func (p *Proposal) Marshal() []byte {
	w := NewWriter()
	p.encode(w)
	return w.Bytes()
}

func decodeProposal(d *decoder) Proposal {
	var p Proposal
	p.Type = d.u16("Proposal.proposal_type")
	if d.err != nil {
		return p
	}
	switch p.Type {
	case ProposalTypeAdd:
		kp := decodeKeyPackage(d)
		p.Add = &kp
	case ProposalTypeUpdate:
		ln := decodeLeafNode(d)
		p.Update = &ln
	case ProposalTypeRemove:
		p.Removed = d.u32("Remove.removed")
	case ProposalTypePSK:
		psk := decodePreSharedKeyID(d)
		p.PSK = &psk
	case ProposalTypeReInit:
		p.ReInit = &ReInit{
			GroupID:     d.vec("ReInit.group_id"),
			Version:     d.u16("ReInit.version"),
			CipherSuite: CipherSuite(d.u16("ReInit.cipher_suite")),
			Extensions:  decodeExtensions(d, "ReInit.extensions"),
		}
	case ProposalTypeExternalInit:
		p.KEMOutput = d.vec("ExternalInit.kem_output")
	case ProposalTypeGroupContextExtensions:
		p.Extensions = decodeExtensions(d, "GroupContextExtensions.extensions")
	default:
		d.failf("Proposal.proposal_type", "unknown proposal type %d has no length prefix and cannot be decoded", p.Type)
	}
	return p
}

// UnmarshalProposal decodes exactly one Proposal. Only the syntax is
// checked (nested KeyPackages and LeafNodes are not validated).
func UnmarshalProposal(b []byte) (*Proposal, error) {
	d := newDecoder(b)
	p := decodeProposal(d)
	if err := d.finish("Proposal"); err != nil {
		return nil, err
	}
	return &p, nil
}

// ProposalOrRef types (§12.4).
const (
	ProposalOrRefTypeProposal  uint8 = 1
	ProposalOrRefTypeReference uint8 = 2
)

// ProposalOrRef is one entry of Commit.proposals: an inline Proposal
// (Type 1) or a ProposalRef (Type 2, Reference).
type ProposalOrRef struct {
	Type      uint8
	Proposal  *Proposal
	Reference []byte
}

func (p *ProposalOrRef) encode(w *Writer) {
	w.U8(p.Type)
	switch p.Type {
	case ProposalOrRefTypeProposal:
		prop := p.Proposal
		if prop == nil {
			prop = &Proposal{}
		}
		prop.encode(w)
	case ProposalOrRefTypeReference:
		w.Vector(p.Reference)
	}
}

func decodeProposalOrRef(d *decoder) ProposalOrRef {
	var p ProposalOrRef
	p.Type = d.u8("ProposalOrRef.type")
	switch {
	case d.err != nil:
	case p.Type == ProposalOrRefTypeProposal:
		prop := decodeProposal(d)
		p.Proposal = &prop
	case p.Type == ProposalOrRefTypeReference:
		p.Reference = d.vec("ProposalOrRef.reference")
	default:
		d.failf("ProposalOrRef.type", "invalid value %d", p.Type)
	}
	return p
}
