package mls

import (
	"bytes"
	"crypto"
	"fmt"
	"time"
)

// ExtensionLastResort is the last_resort_key_package KeyPackage extension
// (draft-ietf-mls-extensions, value 0x000A as deployed by OpenMLS and
// mls-rs). Its body is empty.
const ExtensionLastResort uint16 = 0x000A

// KeyPackage is RFC 9420 §10's KeyPackage.
type KeyPackage struct {
	Version     uint16
	CipherSuite CipherSuite
	InitKey     []byte
	LeafNode    LeafNode
	Extensions  []Extension
	Signature   []byte
}

func (kp *KeyPackage) encodeContent(w *Writer) {
	w.U16(kp.Version)
	w.U16(uint16(kp.CipherSuite))
	w.Vector(kp.InitKey)
	kp.LeafNode.encode(w)
	encodeExtensions(w, kp.Extensions)
}

func (kp *KeyPackage) encode(w *Writer) {
	kp.encodeContent(w)
	w.Vector(kp.Signature)
}

// Marshal returns the TLS encoding of the KeyPackage (without the
// MLSMessage header; see KeyPackageMessage for that).
func (kp *KeyPackage) Marshal() []byte {
	w := NewWriter()
	kp.encode(w)
	return w.Bytes()
}

// TBS returns the encoded KeyPackageTBS.
func (kp *KeyPackage) TBS() []byte {
	w := NewWriter()
	kp.encodeContent(w)
	return w.Bytes()
}

// Ref returns the KeyPackageRef, the identifier a Welcome uses.
func (kp *KeyPackage) Ref() ([]byte, error) {
	s, err := LookupSuite(kp.CipherSuite)
	if err != nil {
		return nil, err
	}
	return s.KeyPackageRef(kp.Marshal()), nil
}

// HasExtension reports whether the KeyPackage carries an extension of type t.
func (kp *KeyPackage) HasExtension(t uint16) bool {
	for _, e := range kp.Extensions {
		if e.Type == t {
			return true
		}
	}
	return false
}

func decodeKeyPackage(d *decoder) KeyPackage {
	var kp KeyPackage
	kp.Version = d.u16("KeyPackage.version")
	kp.CipherSuite = CipherSuite(d.u16("KeyPackage.cipher_suite"))
	kp.InitKey = d.vec("KeyPackage.init_key")
	if d.err == nil {
		kp.LeafNode = decodeLeafNode(d)
	}
	kp.Extensions = decodeExtensions(d, "KeyPackage.extensions")
	kp.Signature = d.vec("KeyPackage.signature")
	return kp
}

// UnmarshalKeyPackage decodes exactly one KeyPackage; trailing bytes are an
// error. Only the syntax is checked; call Verify for the §10.1 rules.
func UnmarshalKeyPackage(b []byte) (*KeyPackage, error) {
	d := newDecoder(b)
	kp := decodeKeyPackage(d)
	if err := d.finish("KeyPackage"); err != nil {
		return nil, err
	}
	return &kp, nil
}

func invalidKP(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidKeyPackage}, args...)...)
}

// Verify applies the KeyPackage validation of §10.1 and the leaf rules of
// §7.2/§7.3 that do not need a group. A zero now skips the lifetime check
// (useful for stored test vectors). Every error wraps ErrInvalidKeyPackage.
func (kp *KeyPackage) Verify(now time.Time) error {
	if kp.Version != ProtocolVersionMLS10 {
		return invalidKP("version %d is not mls10", kp.Version)
	}
	s, err := LookupSuite(kp.CipherSuite)
	if err != nil {
		return invalidKP("%w", err)
	}
	ln := &kp.LeafNode
	if ln.Source != LeafNodeSourceKeyPackage || ln.Lifetime == nil {
		return invalidKP("leaf_node_source %d is not key_package", ln.Source)
	}
	if bytes.Equal(ln.EncryptionKey, kp.InitKey) {
		return invalidKP("leaf_node.encryption_key equals init_key")
	}
	if err := s.ValidateHPKEPublicKey(kp.InitKey); err != nil {
		return invalidKP("init_key: %w", err)
	}
	if err := s.ValidateHPKEPublicKey(ln.EncryptionKey); err != nil {
		return invalidKP("encryption_key: %w", err)
	}
	if err := s.ValidateSignaturePublicKey(ln.SignatureKey); err != nil {
		return invalidKP("signature_key: %w", err)
	}
	if err := checkCredential(&ln.Credential, ln.SignatureKey); err != nil {
		return invalidKP("credential: %w", err)
	}
	if err := ln.checkCapabilities(kp.Extensions); err != nil {
		return invalidKP("%w", err)
	}
	if !now.IsZero() {
		t := now.Unix()
		if t < 0 || uint64(t) < ln.Lifetime.NotBefore || uint64(t) > ln.Lifetime.NotAfter {
			return invalidKP("lifetime [%d, %d] does not contain %d", ln.Lifetime.NotBefore, ln.Lifetime.NotAfter, t)
		}
	}
	if err := ln.VerifySignature(s, nil, 0); err != nil {
		return invalidKP("leaf node signature: %w", err)
	}
	if err := s.VerifyWithLabel(ln.SignatureKey, LabelKeyPackageTBS, kp.TBS(), kp.Signature); err != nil {
		return invalidKP("signature: %w", err)
	}
	return nil
}

// KeyPackageParams are the inputs of NewKeyPackage. Capabilities holds only
// extra, caller-requested entries; the ones the KeyPackage itself needs are
// added by NewKeyPackage.
type KeyPackageParams struct {
	Suite                      CipherSuite
	InitKey                    []byte
	EncryptionKey              []byte
	SignatureKey               []byte
	Credential                 Credential
	Capabilities               Capabilities
	LeafExtensions, Extensions []Extension
	Lifetime                   Lifetime
	LastResort                 bool
}

// appendUnique appends the values of add not yet in list, keeping order.
// A set keeps it linear: callers may pass thousands of values.
func appendUnique(list []uint16, add ...uint16) []uint16 {
	if len(add) == 0 {
		return list
	}
	seen := make(map[uint16]struct{}, len(list)+len(add))
	for _, v := range list {
		seen[v] = struct{}{}
	}
	for _, v := range add {
		if _, ok := seen[v]; !ok {
			seen[v] = struct{}{}
			list = append(list, v)
		}
	}
	return list
}

func invalidParams(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidParams}, args...)...)
}

// maxField keeps every vector far below the varint limit, so Marshal of a
// constructed KeyPackage cannot fail.
const maxField = 1 << 20

// NewKeyPackage builds and signs a KeyPackage. The private keys behind
// InitKey and EncryptionKey stay with the caller; signer holds the key for
// SignatureKey and is asked for two signatures (LeafNodeTBS, then
// KeyPackageTBS). The result is checked with Verify before it is returned,
// which also catches a signer whose key is not SignatureKey.
func NewKeyPackage(p KeyPackageParams, signer crypto.Signer) (*KeyPackage, error) {
	s, err := LookupSuite(p.Suite)
	if err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, invalidParams("nil signer")
	}
	if err := s.ValidateHPKEPublicKey(p.InitKey); err != nil {
		return nil, fmt.Errorf("init_key: %w", err)
	}
	if err := s.ValidateHPKEPublicKey(p.EncryptionKey); err != nil {
		return nil, fmt.Errorf("encryption_key: %w", err)
	}
	if bytes.Equal(p.InitKey, p.EncryptionKey) {
		return nil, invalidParams("encryption_key must differ from init_key")
	}
	if err := s.ValidateSignaturePublicKey(p.SignatureKey); err != nil {
		return nil, fmt.Errorf("signature_key: %w", err)
	}
	if p.Lifetime.NotBefore >= p.Lifetime.NotAfter {
		return nil, invalidParams("lifetime not_before %d is not before not_after %d", p.Lifetime.NotBefore, p.Lifetime.NotAfter)
	}
	if err := checkCredential(&p.Credential, p.SignatureKey); err != nil {
		return nil, invalidParams("%w", err)
	}
	size := len(p.Credential.Identity)
	for _, c := range p.Credential.Certificates {
		size += len(c)
	}
	for _, e := range append(append([]Extension(nil), p.LeafExtensions...), p.Extensions...) {
		size += len(e.Data)
	}
	if size > maxField {
		return nil, invalidParams("credential and extensions exceed %d bytes", maxField)
	}
	// What this package could not decode again is not built.
	for name, l := range map[string]int{"leaf extensions": len(p.LeafExtensions), "KeyPackage extensions": len(p.Extensions) + 1} {
		if l > MaxExtensions {
			return nil, invalidParams("%d %s, more than %d", l, name, MaxExtensions)
		}
	}
	for _, t := range p.Capabilities.Extensions {
		if isDefaultExtension(t) {
			return nil, invalidParams("default extension type %d must not be listed in capabilities", t)
		}
	}
	for _, t := range p.Capabilities.Proposals {
		if isDefaultProposal(t) {
			return nil, invalidParams("default proposal type %d must not be listed in capabilities", t)
		}
	}
	exts := cloneExtensions(p.Extensions)
	if p.LastResort && !containsExt(exts, ExtensionLastResort) {
		exts = append(exts, Extension{Type: ExtensionLastResort, Data: []byte{}})
	}
	for _, list := range [][]Extension{p.LeafExtensions, exts} {
		seen := map[uint16]bool{}
		for _, e := range list {
			if seen[e.Type] {
				return nil, invalidParams("duplicate extension type 0x%04x", e.Type)
			}
			seen[e.Type] = true
		}
	}

	// §7.2: everything the leaf and KeyPackage use must be listed, and the
	// defaults must not be. Required entries go first so a caller's extras
	// cannot reorder them.
	var caps Capabilities
	caps.Versions = appendUnique([]uint16{ProtocolVersionMLS10}, p.Capabilities.Versions...)
	caps.CipherSuites = appendUnique([]uint16{uint16(p.Suite)}, p.Capabilities.CipherSuites...)
	var used []uint16
	for _, list := range [][]Extension{p.LeafExtensions, exts} {
		for _, e := range list {
			if !isDefaultExtension(e.Type) {
				used = append(used, e.Type)
			}
		}
	}
	caps.Extensions = appendUnique(nil, append(used, p.Capabilities.Extensions...)...)
	caps.Proposals = appendUnique(nil, p.Capabilities.Proposals...)
	caps.Credentials = appendUnique([]uint16{p.Credential.Type}, p.Capabilities.Credentials...)
	for name, l := range map[string]int{"versions": len(caps.Versions), "cipher_suites": len(caps.CipherSuites),
		"extensions": len(caps.Extensions), "proposals": len(caps.Proposals), "credentials": len(caps.Credentials)} {
		if l > MaxCapabilityEntries {
			return nil, invalidParams("capabilities.%s: %d entries, more than %d", name, l, MaxCapabilityEntries)
		}
	}

	lt := p.Lifetime
	kp := &KeyPackage{
		Version:     ProtocolVersionMLS10,
		CipherSuite: p.Suite,
		InitKey:     append([]byte{}, p.InitKey...),
		LeafNode: LeafNode{
			EncryptionKey: append([]byte{}, p.EncryptionKey...),
			SignatureKey:  append([]byte{}, p.SignatureKey...),
			Credential:    cloneCredential(p.Credential),
			Capabilities:  caps,
			Source:        LeafNodeSourceKeyPackage,
			Lifetime:      &lt,
			Extensions:    cloneExtensions(p.LeafExtensions),
		},
		Extensions: exts,
	}
	if kp.LeafNode.Signature, err = s.SignWithLabel(signer, LabelLeafNodeTBS, kp.LeafNode.TBS(nil, 0)); err != nil {
		return nil, fmt.Errorf("mls: signing leaf node: %w", err)
	}
	if kp.Signature, err = s.SignWithLabel(signer, LabelKeyPackageTBS, kp.TBS()); err != nil {
		return nil, fmt.Errorf("mls: signing KeyPackage: %w", err)
	}
	if err := kp.Verify(time.Time{}); err != nil {
		return nil, fmt.Errorf("mls: new KeyPackage does not verify (signer key differs from signature_key?): %w", err)
	}
	return kp, nil
}

func containsExt(list []Extension, t uint16) bool {
	for _, e := range list {
		if e.Type == t {
			return true
		}
	}
	return false
}

// The constructed KeyPackage must not share memory with the caller's
// params: a later change there would silently invalidate the signatures.
func cloneExtensions(in []Extension) []Extension {
	var out []Extension
	for _, e := range in {
		out = append(out, Extension{Type: e.Type, Data: append([]byte{}, e.Data...)})
	}
	return out
}

func cloneCredential(c Credential) Credential {
	out := Credential{Type: c.Type}
	if c.Identity != nil {
		out.Identity = append([]byte{}, c.Identity...)
	}
	for _, cert := range c.Certificates {
		out.Certificates = append(out.Certificates, append([]byte{}, cert...))
	}
	return out
}
