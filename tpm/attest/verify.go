// Package attest verifies the key attestations of mlskeyd's TPM backend
// without a TPM or the daemon: pure Go, no cgo, so verifiers and mlskeyctl
// can use it anywhere.
package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math/big"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// ErrAttestation is wrapped by VerifyCertify and AttestationKeyPublic for
// every reason an attestation is rejected; the message says which check
// failed.
var ErrAttestation = errors.New("attestation does not verify")

// Format names TPM2_Certify evidence in keystore.Attestation.Format.
const Format = "tpm2-certify"

func attErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrAttestation}, args...)...)
}

// VerifyCertify checks a "tpm2-certify" attestation from Attest against
// the key's MLS public key (an uncompressed point, 04 || X || Y) and the
// verifier's nonce. It needs no TPM and no daemon. It checks that:
//
//   - Format is "tpm2-certify";
//   - AttestationKey is a TPMT_PUBLIC of a restricted, fixedTPM ECC P-256
//     signing key with the ECDSA SHA-256 scheme;
//   - Signature is a TPMT_SIGNATURE, ECDSA with SHA-256, by that key over
//     SHA-256(Statement);
//   - Statement is a TPMS_ATTEST with magic TPM_GENERATED_VALUE, of type
//     TPM_ST_ATTEST_CERTIFY, whose extraData is the nonce (so it is
//     fresh) and whose certified Name is the Name of KeyPublicArea
//     (nameAlg || H_nameAlg(KeyPublicArea));
//   - KeyPublicArea is an ECC key with fixedTPM, fixedParent and
//     sensitiveDataOrigin (generated in a TPM and unable to leave it)
//     whose point is mlsPublicKey;
//   - any Certificates parse as X.509 (they are not otherwise checked).
//
// A restricted signing key signs a TPMS_ATTEST with TPM_GENERATED_VALUE
// only over data the TPM produced itself, so a valid result proves that
// the TPM holding the AK vouches for a key with that public key and those
// attributes. It does NOT prove that the AK belongs to a genuine TPM, or
// to any particular one: anyone can make an ECC key and sign such bytes.
// Verify adds the trust anchors: an EK certificate chain to a trusted CA
// with credential activation, or an AK pinned when the machine was
// enrolled.
func VerifyCertify(a *keystore.Attestation, mlsPublicKey, nonce []byte) error {
	if a == nil {
		return attErr("no attestation")
	}
	if a.Format != Format {
		return attErr("format %q, want %q", a.Format, Format)
	}
	ak, err := AttestationKeyPublic(a)
	if err != nil {
		return err
	}

	// The signature, over the exact statement bytes.
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](a.Signature)
	if err != nil || !bytes.Equal(tpm2.Marshal(*sig), a.Signature) {
		return attErr("signature: not a TPMT_SIGNATURE")
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return attErr("signature: algorithm 0x%04x, want ECDSA", uint16(sig.SigAlg))
	}
	e, err := sig.Signature.ECDSA()
	if err != nil {
		return attErr("signature: %v", err)
	}
	if e.Hash != tpm2.TPMAlgSHA256 {
		return attErr("signature: hash 0x%04x, want SHA-256", uint16(e.Hash))
	}
	digest := sha256.Sum256(a.Statement)
	r := new(big.Int).SetBytes(e.SignatureR.Buffer)
	s := new(big.Int).SetBytes(e.SignatureS.Buffer)
	if !ecdsa.Verify(ak, digest[:], r, s) {
		return attErr("signature: does not verify with the attestation key")
	}

	// The statement.
	if len(a.Statement) < 4 || binary.BigEndian.Uint32(a.Statement) != uint32(tpm2.TPMGeneratedValue) {
		return attErr("statement: magic is not TPM_GENERATED_VALUE")
	}
	st, err := tpm2.Unmarshal[tpm2.TPMSAttest](a.Statement)
	if err != nil || !bytes.Equal(tpm2.Marshal(*st), a.Statement) {
		return attErr("statement: not a TPMS_ATTEST")
	}
	if st.Type != tpm2.TPMSTAttestCertify {
		return attErr("statement: type 0x%04x, want TPM_ST_ATTEST_CERTIFY", uint16(st.Type))
	}
	if subtle.ConstantTimeCompare(st.ExtraData.Buffer, nonce) != 1 {
		return attErr("statement: extraData does not match the nonce")
	}
	ci, err := st.Attested.Certify()
	if err != nil {
		return attErr("statement: %v", err)
	}

	// The certified key.
	kp, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.KeyPublicArea)
	if err != nil || !bytes.Equal(tpm2.Marshal(*kp), a.KeyPublicArea) {
		return attErr("key public area: not a TPMT_PUBLIC")
	}
	name, err := nameOf(kp.NameAlg, a.KeyPublicArea)
	if err != nil {
		return err
	}
	if !bytes.Equal(ci.Name.Buffer, name) {
		return attErr("key public area: its Name is not the certified Name")
	}
	if kp.Type != tpm2.TPMAlgECC {
		return attErr("key public area: type 0x%04x, want ECC", uint16(kp.Type))
	}
	if at := kp.ObjectAttributes; !at.FixedTPM || !at.FixedParent || !at.SensitiveDataOrigin {
		return attErr("key public area: fixedTPM=%v fixedParent=%v sensitiveDataOrigin=%v, want all set",
			at.FixedTPM, at.FixedParent, at.SensitiveDataOrigin)
	}
	pt, err := eccPoint(kp)
	if err != nil {
		return attErr("key public area: %v", err)
	}
	if !bytes.Equal(pt, mlsPublicKey) {
		return attErr("key public area: the certified key is not the given public key")
	}

	for i, c := range a.Certificates {
		if _, err := x509.ParseCertificate(c); err != nil {
			return attErr("certificate %d: %v", i, err)
		}
	}
	return nil
}

// AttestationKeyPublic parses and checks the attestation key of an
// attestation: a TPMT_PUBLIC of a restricted, fixedTPM ECC P-256 signing
// key with the ECDSA SHA-256 scheme. It returns the key, e.g. to compare
// with an AK enrolled earlier; it proves nothing about the key by itself.
func AttestationKeyPublic(a *keystore.Attestation) (*ecdsa.PublicKey, error) {
	if a == nil {
		return nil, attErr("no attestation")
	}
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.AttestationKey)
	if err != nil || !bytes.Equal(tpm2.Marshal(*p), a.AttestationKey) {
		return nil, attErr("attestation key: not a TPMT_PUBLIC")
	}
	if p.Type != tpm2.TPMAlgECC {
		return nil, attErr("attestation key: type 0x%04x, want ECC", uint16(p.Type))
	}
	if at := p.ObjectAttributes; !at.Restricted || !at.SignEncrypt || !at.FixedTPM || at.Decrypt {
		return nil, attErr("attestation key: restricted=%v sign=%v fixedTPM=%v decrypt=%v, want a restricted fixedTPM signing key",
			at.Restricted, at.SignEncrypt, at.FixedTPM, at.Decrypt)
	}
	parms, err := p.Parameters.ECCDetail()
	if err != nil {
		return nil, attErr("attestation key: %v", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, attErr("attestation key: curve 0x%04x, want NIST P-256", uint16(parms.CurveID))
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, attErr("attestation key: scheme 0x%04x, want ECDSA", uint16(parms.Scheme.Scheme))
	}
	if d, err := parms.Scheme.Details.ECDSA(); err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, attErr("attestation key: ECDSA scheme hash is not SHA-256")
	}
	pt, err := eccPoint(p)
	if err != nil {
		return nil, attErr("attestation key: %v", err)
	}
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
	if err != nil {
		return nil, attErr("attestation key: %v", err)
	}
	return k, nil
}

// eccPoint returns an ECC public area's point as 04 || X || Y, each
// coordinate left-padded to the curve's size.
func eccPoint(p *tpm2.TPMTPublic) ([]byte, error) {
	parms, err := p.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	var n int
	switch parms.CurveID {
	case tpm2.TPMECCNistP256:
		n = 32
	case tpm2.TPMECCNistP384:
		n = 48
	case tpm2.TPMECCNistP521:
		n = 66
	default:
		return nil, fmt.Errorf("unsupported curve 0x%04x", uint16(parms.CurveID))
	}
	u, err := p.Unique.ECC()
	if err != nil {
		return nil, err
	}
	x, err := leftPad(u.X.Buffer, n)
	if err != nil {
		return nil, err
	}
	y, err := leftPad(u.Y.Buffer, n)
	if err != nil {
		return nil, err
	}
	return append(append([]byte{0x04}, x...), y...), nil
}

// nameOf computes a TPM object Name: nameAlg || H_nameAlg(TPMT_PUBLIC).
func nameOf(alg tpm2.TPMIAlgHash, public []byte) ([]byte, error) {
	var d hash.Hash
	switch alg {
	case tpm2.TPMAlgSHA256:
		d = sha256.New()
	case tpm2.TPMAlgSHA384:
		d = sha512.New384()
	case tpm2.TPMAlgSHA512:
		d = sha512.New()
	default:
		return nil, attErr("key public area: nameAlg 0x%04x is not SHA-256, SHA-384 or SHA-512", uint16(alg))
	}
	d.Write(public)
	return d.Sum(binary.BigEndian.AppendUint16(nil, uint16(alg))), nil
}

// leftPad widens a big-endian coordinate to the curve's fixed size.
func leftPad(b []byte, n int) ([]byte, error) {
	if len(b) > n {
		return nil, fmt.Errorf("%d-byte value for a %d-byte field", len(b), n)
	}
	out := make([]byte, n)
	copy(out[n-len(b):], b)
	return out, nil
}
