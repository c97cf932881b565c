package mls

import "encoding/binary"

// Signature labels (RFC 9420 §17.6) and encryption labels (§17.7). The
// "MLS 1.0 " prefix is added by SignWithLabel / EncryptWithLabel.
const (
	LabelFramedContentTBS = "FramedContentTBS"
	LabelLeafNodeTBS      = "LeafNodeTBS"
	LabelKeyPackageTBS    = "KeyPackageTBS"
	LabelGroupInfoTBS     = "GroupInfoTBS"
	LabelUpdatePathNode   = "UpdatePathNode"
	LabelWelcome          = "Welcome"
)

// labelPrefix binds every labelled operation to this protocol version so
// that a signature or ciphertext cannot be replayed across versions.
const labelPrefix = "MLS 1.0 "

// SignatureLabels lists the labels a signing key may be asked to sign with.
var SignatureLabels = []string{LabelFramedContentTBS, LabelLeafNodeTBS, LabelKeyPackageTBS, LabelGroupInfoTBS}

// EncryptionLabels lists the labels an HPKE key may be asked to decrypt with.
var EncryptionLabels = []string{LabelUpdatePathNode, LabelWelcome}

// SignContent returns the encoded SignContent{label, content} (§5.1.2) that
// is actually signed; label gets the "MLS 1.0 " prefix.
func SignContent(label string, content []byte) []byte {
	return labelled(label, content)
}

// EncryptContext returns the encoded EncryptContext{label, context} (§5.1.3)
// used as the HPKE info; label gets the "MLS 1.0 " prefix.
func EncryptContext(label string, context []byte) []byte {
	return labelled(label, context)
}

func labelled(label string, content []byte) []byte {
	w := NewWriter()
	w.Vector([]byte(labelPrefix + label))
	w.Vector(content)
	return w.Bytes()
}

// kdfLabel encodes KDFLabel{uint16 length; label<V>; context<V>} (§8).
func kdfLabel(length int, label string, context []byte) []byte {
	w := NewWriter()
	w.U16(uint16(length))
	w.Vector([]byte(labelPrefix + label))
	w.Vector(context)
	return w.Bytes()
}

func uint32Bytes(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
