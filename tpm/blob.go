package tpm

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Blob versions: the first byte of every blob this package returns, so that
// a later format can be told apart.
const (
	blobKey    = 0x01 // key reference: 0x01 || TPM2B_PUBLIC || TPM2B_PRIVATE
	blobSealed = 0x02 // sealed data:   0x02 || TPM2B_PUBLIC || TPM2B_PRIVATE
	// 0x03 (sealed data in an epoch) and 0x04 (a key in an epoch) carry
	// len(epoch) || epoch after the version byte; see epoch.go.
	blobKeyEpoch = 0x04
	// 0x05 (a key bound to a revocation bit, in an epoch or not) carries
	// the revocation and len(epoch) || epoch; see revoke.go.
)

// algSpec is how one keystore algorithm maps onto a TPM ECC key.
type algSpec struct {
	alg       keystore.Algorithm
	curve     tpm2.TPMECCCurve
	hash      tpm2.TPMIAlgHash // the scheme's hash: SHA-256/384/512
	hashSize  int
	coordSize int  // bytes per coordinate (and per r, s)
	sign      bool // ECDSA signing key, else ECDH decrypt key
}

var algSpecs = map[keystore.Algorithm]algSpec{
	keystore.ECDSAP256: {keystore.ECDSAP256, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 32, 32, true},
	keystore.ECDSAP384: {keystore.ECDSAP384, tpm2.TPMECCNistP384, tpm2.TPMAlgSHA384, 48, 48, true},
	keystore.ECDSAP521: {keystore.ECDSAP521, tpm2.TPMECCNistP521, tpm2.TPMAlgSHA512, 64, 66, true},
	keystore.ECDHP256:  {keystore.ECDHP256, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 32, 32, false},
	keystore.ECDHP384:  {keystore.ECDHP384, tpm2.TPMECCNistP384, tpm2.TPMAlgSHA384, 48, 48, false},
	keystore.ECDHP521:  {keystore.ECDHP521, tpm2.TPMECCNistP521, tpm2.TPMAlgSHA512, 64, 66, false},
}

// scheme is the key's fixed scheme: ECDSA with the curve's hash for
// signing keys, ECDH for key-agreement keys. Fixing it in the public area
// means the TPM itself refuses any other use of the key.
func (s algSpec) scheme() tpm2.TPMTECCScheme {
	if s.sign {
		return tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: s.hash}),
		}
	}
	return tpm2.TPMTECCScheme{
		Scheme:  tpm2.TPMAlgECDH,
		Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDH, &tpm2.TPMSKeySchemeECDH{HashAlg: s.hash}),
	}
}

func (s algSpec) parms() *tpm2.TPMSECCParms {
	return &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    s.scheme(),
		CurveID:   s.curve,
		KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}
}

// template is the public area of a new key: a non-duplicable child of the
// SRK (fixedTPM, fixedParent) whose private part the TPM generated
// (sensitiveDataOrigin), usable with an empty auth value (userWithAuth;
// the blob itself is the credential, and the catalog guards it), and
// either sign or decrypt, never both.
func (s algSpec) template() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         s.sign,
			Decrypt:             !s.sign,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, s.parms()),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 0)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 0)},
		}),
	}
}

func specFor(alg keystore.Algorithm) (algSpec, error) {
	s, ok := algSpecs[alg]
	if !ok {
		return algSpec{}, fmt.Errorf("%w: %s", keystore.ErrUnsupportedAlgorithm, alg)
	}
	return s, nil
}

// blob is a parsed key reference or sealed blob.
type blob struct {
	epoch string  // the parent's epoch; "" for the SRK
	rev   *revRef // the key's revocation bit; nil for none
	pub   tpm2.TPM2BPublic
	priv  tpm2.TPM2BPrivate
	area  *tpm2.TPMTPublic // the parsed public area
}

func encodeBlob(version byte, pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate) []byte {
	p, q := tpm2.Marshal(pub), tpm2.Marshal(priv)
	out := make([]byte, 0, 1+len(p)+len(q))
	out = append(out, version)
	out = append(out, p...)
	return append(out, q...)
}

// parseBlob splits version || TPM2B_PUBLIC || TPM2B_PRIVATE. Both parts
// are size-prefixed, so the split needs no knowledge of their contents.
func parseBlob(b []byte, version byte) (*blob, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadBlob)
	}
	if b[0] != version {
		return nil, fmt.Errorf("%w: version byte 0x%02x, want 0x%02x", ErrBadBlob, b[0], version)
	}
	rest := b[1:]
	pubBytes, rest, ok := cut2B(rest)
	if !ok {
		return nil, fmt.Errorf("%w: truncated TPM2B_PUBLIC", ErrBadBlob)
	}
	privBytes, rest, ok := cut2B(rest)
	if !ok {
		return nil, fmt.Errorf("%w: truncated TPM2B_PRIVATE", ErrBadBlob)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadBlob, len(rest))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: TPM2B_PUBLIC: %v", ErrBadBlob, err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: TPM2B_PRIVATE: %v", ErrBadBlob, err)
	}
	area, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: TPMT_PUBLIC: %v", ErrBadBlob, err)
	}
	return &blob{pub: *pub, priv: *priv, area: area}, nil
}

func cut2B(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, nil, false
	}
	return b[:2+n], b[2+n:], true
}

// matches checks that the public area is an ECC key for alg with the
// attributes Generate sets. It runs before the blob goes to the TPM, so a
// blob of the wrong kind fails with a clear message rather than a TPM_RC.
func (bl *blob) matches(s algSpec) error {
	a := bl.area
	if a.Type != tpm2.TPMAlgECC {
		return fmt.Errorf("%w: object type %v, want ECC", ErrBadBlob, a.Type)
	}
	parms, err := a.Parameters.ECCDetail()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	if parms.CurveID != s.curve {
		return fmt.Errorf("%w: curve 0x%04x, %s needs 0x%04x", ErrBadBlob, uint16(parms.CurveID), s.alg, uint16(s.curve))
	}
	attrs := a.ObjectAttributes
	if !attrs.FixedTPM || !attrs.FixedParent || !attrs.SensitiveDataOrigin {
		return fmt.Errorf("%w: fixedTPM=%v fixedParent=%v sensitiveDataOrigin=%v", ErrNotProtected,
			attrs.FixedTPM, attrs.FixedParent, attrs.SensitiveDataOrigin)
	}
	if s.sign && (!attrs.SignEncrypt || attrs.Decrypt) {
		return fmt.Errorf("%w: %s needs a sign-only key (sign=%v decrypt=%v)", keystore.ErrWrongRole, s.alg, attrs.SignEncrypt, attrs.Decrypt)
	}
	if !s.sign && (!attrs.Decrypt || attrs.SignEncrypt) {
		return fmt.Errorf("%w: %s needs a decrypt-only key (sign=%v decrypt=%v)", keystore.ErrWrongRole, s.alg, attrs.SignEncrypt, attrs.Decrypt)
	}
	if s.sign {
		if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
			return fmt.Errorf("%w: scheme %v, want ECDSA", ErrBadBlob, parms.Scheme.Scheme)
		}
		d, err := parms.Scheme.Details.ECDSA()
		if err != nil || d.HashAlg != s.hash {
			return fmt.Errorf("%w: ECDSA scheme hash does not match %s", ErrBadBlob, s.alg)
		}
	} else if parms.Scheme.Scheme != tpm2.TPMAlgECDH {
		return fmt.Errorf("%w: scheme %v, want ECDH", ErrBadBlob, parms.Scheme.Scheme)
	}
	return nil
}

// leftPad returns b left-padded with zeros to n bytes; TPM2B_ECC_PARAMETER
// values drop leading zero bytes, MLS wants fixed width.
func leftPad(b []byte, n int) ([]byte, error) {
	if len(b) > n {
		return nil, fmt.Errorf("tpm: %d-byte value for a %d-byte field", len(b), n)
	}
	out := make([]byte, n)
	copy(out[n-len(b):], b)
	return out, nil
}
