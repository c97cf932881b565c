package mls

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"

	"github.com/cloudflare/circl/sign/ed448"
)

// SignWithLabel signs SignContent{"MLS 1.0 "+label, content} (§5.1.2).
//
// For ECDSA the content is hashed here and signer.Sign receives the digest,
// as crypto.Signer requires; the signer must return an ASN.1 DER signature,
// which is also what MLS puts on the wire. For EdDSA the signer receives the
// whole SignContent with crypto.Hash(0) (pure EdDSA, empty context).
func (s *Suite) SignWithLabel(signer crypto.Signer, label string, content []byte) ([]byte, error) {
	if signer == nil {
		return nil, fmt.Errorf("%w: nil signer", ErrInvalidParams)
	}
	msg := SignContent(label, content)
	var sig []byte
	var err error
	switch s.SignatureScheme {
	case SchemeEd25519, SchemeEd448:
		sig, err = signer.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		h := s.Hash.New()
		h.Write(msg)
		sig, err = signer.Sign(rand.Reader, h.Sum(nil), s.Hash)
	}
	if err != nil {
		return nil, fmt.Errorf("mls: SignWithLabel %q: %w", label, err)
	}
	return sig, nil
}

// VerifyWithLabel checks a signature made by SignWithLabel. It returns
// ErrInvalidSignature (or ErrInvalidPublicKey) on failure.
func (s *Suite) VerifyWithLabel(pub []byte, label string, content, sig []byte) error {
	if err := s.ValidateSignaturePublicKey(pub); err != nil {
		return err
	}
	msg := SignContent(label, content)
	ok := false
	switch s.SignatureScheme {
	case SchemeEd25519:
		ok = len(sig) == ed25519.SignatureSize && ed25519.Verify(ed25519.PublicKey(pub), msg, sig)
	case SchemeEd448:
		ok = len(sig) == ed448.SignatureSize && ed448.Verify(ed448.PublicKey(pub), msg, sig, "")
	default:
		key, err := ecdsa.ParseUncompressedPublicKey(s.ecdsaCurve(), pub)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidPublicKey, err)
		}
		h := s.Hash.New()
		h.Write(msg)
		ok = ecdsa.VerifyASN1(key, h.Sum(nil), sig)
	}
	if !ok {
		return fmt.Errorf("%w: label %q", ErrInvalidSignature, label)
	}
	return nil
}

func (s *Suite) ecdsaCurve() elliptic.Curve {
	switch s.SignatureScheme {
	case SchemeECDSAP256SHA256:
		return elliptic.P256()
	case SchemeECDSAP384SHA384:
		return elliptic.P384()
	case SchemeECDSAP521SHA512:
		return elliptic.P521()
	}
	return nil
}

// ecdhCurveForSignature maps the ECDSA curve to crypto/ecdh, whose
// NewPublicKey performs the uncompressed-point and on-curve checks.
func (s *Suite) ecdhCurveForSignature() ecdh.Curve {
	switch s.SignatureScheme {
	case SchemeECDSAP256SHA256:
		return ecdh.P256()
	case SchemeECDSAP384SHA384:
		return ecdh.P384()
	case SchemeECDSAP521SHA512:
		return ecdh.P521()
	}
	return nil
}

// ValidateSignaturePublicKey checks that b is a SignaturePublicKey of the
// suite: an RFC 8032 key of the right length for EdDSA, an uncompressed
// point on the curve for ECDSA.
func (s *Suite) ValidateSignaturePublicKey(b []byte) error {
	switch s.SignatureScheme {
	case SchemeEd25519:
		if len(b) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrInvalidPublicKey, len(b))
		}
		return nil
	case SchemeEd448:
		if len(b) != ed448.PublicKeySize {
			return fmt.Errorf("%w: Ed448 key of %d bytes", ErrInvalidPublicKey, len(b))
		}
		return nil
	}
	c := s.ecdhCurveForSignature()
	if c == nil {
		return fmt.Errorf("%w: signature scheme 0x%04x", ErrUnknownSuite, s.SignatureScheme)
	}
	if _, err := c.NewPublicKey(b); err != nil {
		return fmt.Errorf("%w: %s signature key: %w", ErrInvalidPublicKey, s.SignatureAlgorithm, err)
	}
	return nil
}
