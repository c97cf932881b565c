package mls

import (
	"crypto/ecdh"
	"crypto/hpke"
	"fmt"
)

// kemCurve returns the crypto/ecdh curve of the suite's DHKEM, or nil for
// X448, which crypto/ecdh and crypto/hpke do not offer.
func (s *Suite) kemCurve() ecdh.Curve {
	switch s.KEM {
	case KEMX25519:
		return ecdh.X25519()
	case KEMP256:
		return ecdh.P256()
	case KEMP384:
		return ecdh.P384()
	case KEMP521:
		return ecdh.P521()
	}
	return nil
}

// KEMOutputSize returns Nenc, the length of an HPKE encapsulated key.
func (s *Suite) KEMOutputSize() int {
	switch s.KEM {
	case KEMX25519:
		return 32
	case KEMX448:
		return x448KeySize
	case KEMP256:
		return 65
	case KEMP384:
		return 97
	case KEMP521:
		return 133
	}
	return 0
}

func (s *Suite) hpkeAlgs() (hpke.KDF, hpke.AEAD, error) {
	kdf, err := hpke.NewKDF(s.KDF)
	if err != nil {
		return nil, nil, err
	}
	aead, err := hpke.NewAEAD(s.AEAD)
	if err != nil {
		return nil, nil, err
	}
	return kdf, aead, nil
}

// ValidateHPKEPublicKey checks that b is an HPKEPublicKey of the suite's KEM
// in RFC 9180 serialization: the right length for X25519/X448, an
// uncompressed point on the curve for the NIST curves.
func (s *Suite) ValidateHPKEPublicKey(b []byte) error {
	if s.KEM == KEMX448 {
		if len(b) != x448KeySize {
			return fmt.Errorf("%w: X448 key of %d bytes", ErrInvalidPublicKey, len(b))
		}
		if isLowOrder(b) {
			return fmt.Errorf("%w: X448 point of small order", ErrInvalidPublicKey)
		}
		return nil
	}
	c := s.kemCurve()
	if c == nil {
		return fmt.Errorf("%w: KEM 0x%04x", ErrUnknownSuite, s.KEM)
	}
	if _, err := c.NewPublicKey(b); err != nil {
		return fmt.Errorf("%w: %s HPKE key: %w", ErrInvalidPublicKey, s.KEMAlgorithm, err)
	}
	if s.KEM == KEMX25519 && isLowOrder(b) {
		return fmt.Errorf("%w: X25519 point of small order", ErrInvalidPublicKey)
	}
	return nil
}

// EncryptWithLabel implements §5.1.3: HPKE SealBase to pub with
// info = EncryptContext{"MLS 1.0 "+label, context} and empty AAD.
func (s *Suite) EncryptWithLabel(pub []byte, label string, context, plaintext []byte) (kemOutput, ciphertext []byte, err error) {
	if err := s.ValidateHPKEPublicKey(pub); err != nil {
		return nil, nil, err
	}
	info := EncryptContext(label, context)
	if s.KEM == KEMX448 {
		return sealX448(s, pub, info, plaintext)
	}
	kdf, aead, err := s.hpkeAlgs()
	if err != nil {
		return nil, nil, err
	}
	pk, err := hpke.DHKEM(s.kemCurve()).NewPublicKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidPublicKey, err)
	}
	out, err := hpke.Seal(pk, kdf, aead, info, plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: EncryptWithLabel %q: %w", label, err)
	}
	n := s.KEMOutputSize()
	return out[:n:n], out[n:], nil
}

// DecryptWithLabel implements §5.1.3: HPKE OpenBase with
// info = EncryptContext{"MLS 1.0 "+label, context} and empty AAD.
//
// priv is the receiver's key handle: an ecdh.KeyExchanger for the X25519 and
// NIST suites (only its ECDH method is used, so it may live in an HSM), an
// X448KeyExchanger for the X448 suites, or an hpke.PrivateKey.
func (s *Suite) DecryptWithLabel(priv any, label string, context, kemOutput, ciphertext []byte) ([]byte, error) {
	if len(kemOutput) != s.KEMOutputSize() {
		// crypto/hpke splits enc off a concatenation by length, so a wrong
		// length must be caught here rather than shift the ciphertext.
		return nil, fmt.Errorf("%w: kem_output of %d bytes, want %d", ErrDecryption, len(kemOutput), s.KEMOutputSize())
	}
	info := EncryptContext(label, context)
	if s.KEM == KEMX448 {
		k, ok := priv.(X448KeyExchanger)
		if !ok {
			return nil, fmt.Errorf("%w: %s needs an X448KeyExchanger, got %T", ErrInvalidPrivateKey, s.Name, priv)
		}
		return openX448(s, k, kemOutput, info, ciphertext)
	}
	var k hpke.PrivateKey
	switch p := priv.(type) {
	case ecdh.KeyExchanger:
		if p.Curve() != s.kemCurve() {
			return nil, fmt.Errorf("%w: key curve does not match %s", ErrInvalidPrivateKey, s.Name)
		}
		var err error
		if k, err = hpke.NewDHKEMPrivateKey(p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidPrivateKey, err)
		}
	case hpke.PrivateKey:
		if p.KEM().ID() != s.KEM {
			return nil, fmt.Errorf("%w: KEM 0x%04x does not match %s", ErrInvalidPrivateKey, p.KEM().ID(), s.Name)
		}
		k = p
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrInvalidPrivateKey, priv)
	}
	kdf, aead, err := s.hpkeAlgs()
	if err != nil {
		return nil, err
	}
	ct := make([]byte, 0, len(kemOutput)+len(ciphertext))
	ct = append(append(ct, kemOutput...), ciphertext...)
	pt, err := hpke.Open(k, kdf, aead, info, ct)
	if err != nil {
		return nil, fmt.Errorf("%w: label %q: %w", ErrDecryption, label, err)
	}
	return pt, nil
}
