package mls

import "fmt"

// LeafNodeSource values (RFC 9420 §7.2).
const (
	LeafNodeSourceKeyPackage uint8 = 1
	LeafNodeSourceUpdate     uint8 = 2
	LeafNodeSourceCommit     uint8 = 3
)

// ProtocolVersionMLS10 is mls10, the only protocol version.
const ProtocolVersionMLS10 uint16 = 1

// Capabilities lists what a client supports (§7.2). Default proposal and
// extension types are implied and must not be listed.
type Capabilities struct {
	Versions, CipherSuites, Extensions, Proposals, Credentials []uint16
}

// Lifetime bounds a KeyPackage leaf in Unix seconds.
type Lifetime struct {
	NotBefore, NotAfter uint64
}

// Extension is a typed opaque extension.
type Extension struct {
	Type uint16
	Data []byte
}

// LeafNode is RFC 9420 §7.2's LeafNode. Lifetime is set only for source
// key_package and ParentHash only for source commit, mirroring the select
// on the wire so that a decoded leaf re-encodes byte-exactly.
type LeafNode struct {
	EncryptionKey []byte
	SignatureKey  []byte
	Credential    Credential
	Capabilities  Capabilities
	Source        uint8
	Lifetime      *Lifetime
	ParentHash    []byte
	Extensions    []Extension
	Signature     []byte
}

func (c *Capabilities) encode(w *Writer) {
	writeU16List(w, c.Versions)
	writeU16List(w, c.CipherSuites)
	writeU16List(w, c.Extensions)
	writeU16List(w, c.Proposals)
	writeU16List(w, c.Credentials)
}

func decodeCapabilities(d *decoder) Capabilities {
	return Capabilities{
		Versions:     d.u16list("Capabilities.versions", MaxCapabilityEntries),
		CipherSuites: d.u16list("Capabilities.cipher_suites", MaxCapabilityEntries),
		Extensions:   d.u16list("Capabilities.extensions", MaxCapabilityEntries),
		Proposals:    d.u16list("Capabilities.proposals", MaxCapabilityEntries),
		Credentials:  d.u16list("Capabilities.credentials", MaxCapabilityEntries),
	}
}

func encodeExtensions(w *Writer, exts []Extension) {
	sub := NewWriter()
	for _, e := range exts {
		sub.U16(e.Type)
		sub.Vector(e.Data)
	}
	w.VectorFrom(sub)
}

func decodeExtensions(d *decoder, field string) []Extension {
	var exts []Extension
	d.list(field, MaxExtensions, func(d *decoder) {
		e := Extension{Type: d.u16("Extension.extension_type"), Data: d.vec("Extension.extension_data")}
		if d.err == nil {
			exts = append(exts, e)
		}
	})
	return exts
}

// encodeContent writes the LeafNode fields covered by the signature.
func (ln *LeafNode) encodeContent(w *Writer) {
	w.Vector(ln.EncryptionKey)
	w.Vector(ln.SignatureKey)
	ln.Credential.encode(w)
	ln.Capabilities.encode(w)
	w.U8(ln.Source)
	switch ln.Source {
	case LeafNodeSourceKeyPackage:
		var lt Lifetime
		if ln.Lifetime != nil {
			lt = *ln.Lifetime
		}
		w.U64(lt.NotBefore)
		w.U64(lt.NotAfter)
	case LeafNodeSourceCommit:
		w.Vector(ln.ParentHash)
	}
	encodeExtensions(w, ln.Extensions)
}

func (ln *LeafNode) encode(w *Writer) {
	ln.encodeContent(w)
	w.Vector(ln.Signature)
}

// Marshal returns the TLS encoding of the LeafNode.
func (ln *LeafNode) Marshal() []byte {
	w := NewWriter()
	ln.encode(w)
	return w.Bytes()
}

// TBS returns the encoded LeafNodeTBS. groupID and leafIndex are only part
// of it for the update and commit sources; a key_package leaf is not yet
// bound to a group.
func (ln *LeafNode) TBS(groupID []byte, leafIndex uint32) []byte {
	w := NewWriter()
	ln.encodeContent(w)
	if ln.Source == LeafNodeSourceUpdate || ln.Source == LeafNodeSourceCommit {
		w.Vector(groupID)
		w.U32(leafIndex)
	}
	return w.Bytes()
}

// VerifySignature checks the leaf's signature under its own signature_key.
func (ln *LeafNode) VerifySignature(s *Suite, groupID []byte, leafIndex uint32) error {
	return s.VerifyWithLabel(ln.SignatureKey, LabelLeafNodeTBS, ln.TBS(groupID, leafIndex), ln.Signature)
}

func decodeLeafNode(d *decoder) LeafNode {
	ln := decodeLeafNodeContent(d)
	ln.Signature = d.vec("LeafNode.signature")
	return ln
}

// UnmarshalLeafNode decodes exactly one LeafNode.
func UnmarshalLeafNode(b []byte) (*LeafNode, error) {
	d := newDecoder(b)
	ln := decodeLeafNode(d)
	if err := d.finish("LeafNode"); err != nil {
		return nil, err
	}
	return &ln, nil
}

// isDefaultExtension reports the extension types every client supports
// (§7.2), which therefore are never listed in capabilities.
func isDefaultExtension(t uint16) bool { return t >= 1 && t <= 5 }

// isDefaultProposal reports the proposal types 1..7 of §7.2.
func isDefaultProposal(t uint16) bool { return t >= 1 && t <= 7 }

func contains(list []uint16, v uint16) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// checkCapabilities applies the §7.2 rules tying a leaf's content to its
// own capabilities. extra holds further extension lists (the KeyPackage's)
// whose non-default types must also be listed.
func (ln *LeafNode) checkCapabilities(extra ...[]Extension) error {
	if !contains(ln.Capabilities.Credentials, ln.Credential.Type) {
		return fmt.Errorf("credential type %d not listed in capabilities.credentials", ln.Credential.Type)
	}
	listed := make(map[uint16]struct{}, len(ln.Capabilities.Extensions))
	for _, t := range ln.Capabilities.Extensions {
		listed[t] = struct{}{}
	}
	for _, list := range append([][]Extension{ln.Extensions}, extra...) {
		seen := make(map[uint16]struct{}, len(list))
		for _, e := range list {
			if _, dup := seen[e.Type]; dup {
				return fmt.Errorf("duplicate extension type 0x%04x", e.Type)
			}
			seen[e.Type] = struct{}{}
			if _, ok := listed[e.Type]; !isDefaultExtension(e.Type) && !ok {
				return fmt.Errorf("extension type 0x%04x not listed in capabilities.extensions", e.Type)
			}
		}
	}
	return nil
}
