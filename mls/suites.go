package mls

import (
	"golang.org/x/crypto/chacha20poly1305"

	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	_ "crypto/sha256" // registers SHA-256 for crypto.Hash.New
	_ "crypto/sha512" // registers SHA-384 and SHA-512
	"fmt"
	"strconv"
	"strings"
)

// CipherSuite is an MLS cipher suite identifier (RFC 9420 §17.1).
type CipherSuite uint16

// Cipher suites registered by RFC 9420.
const (
	MLS128DHKEMX25519AES128GCMSHA256Ed25519        CipherSuite = 0x0001
	MLS128DHKEMP256AES128GCMSHA256P256             CipherSuite = 0x0002
	MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519 CipherSuite = 0x0003
	MLS256DHKEMX448AES256GCMSHA512Ed448            CipherSuite = 0x0004
	MLS256DHKEMP521AES256GCMSHA512P521             CipherSuite = 0x0005
	MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448     CipherSuite = 0x0006
	MLS256DHKEMP384AES256GCMSHA384P384             CipherSuite = 0x0007
)

// HPKE algorithm identifiers (RFC 9180 §7).
const (
	KEMP256   = 0x0010
	KEMP384   = 0x0011
	KEMP521   = 0x0012
	KEMX25519 = 0x0020
	KEMX448   = 0x0021

	KDFHKDFSHA256 = 0x0001
	KDFHKDFSHA384 = 0x0002
	KDFHKDFSHA512 = 0x0003

	AEADAES128GCM        = 0x0001
	AEADAES256GCM        = 0x0002
	AEADChaCha20Poly1305 = 0x0003
)

// TLS SignatureScheme values used by the MLS suites.
const (
	SchemeECDSAP256SHA256 = 0x0403
	SchemeECDSAP384SHA384 = 0x0503
	SchemeECDSAP521SHA512 = 0x0603
	SchemeEd25519         = 0x0807
	SchemeEd448           = 0x0808
)

// Suite describes the algorithms of one cipher suite.
type Suite struct {
	ID                 CipherSuite
	Name               string
	KEM, KDF, AEAD     uint16
	Hash               crypto.Hash
	SignatureScheme    uint16
	SignatureAlgorithm string // "ed25519", "ed448", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"
	KEMAlgorithm       string // "x25519", "x448", "ecdh-p256", "ecdh-p384", "ecdh-p521"
}

var suites = []*Suite{
	{MLS128DHKEMX25519AES128GCMSHA256Ed25519, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
		KEMX25519, KDFHKDFSHA256, AEADAES128GCM, crypto.SHA256, SchemeEd25519, "ed25519", "x25519"},
	{MLS128DHKEMP256AES128GCMSHA256P256, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
		KEMP256, KDFHKDFSHA256, AEADAES128GCM, crypto.SHA256, SchemeECDSAP256SHA256, "ecdsa-p256", "ecdh-p256"},
	{MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519, "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
		KEMX25519, KDFHKDFSHA256, AEADChaCha20Poly1305, crypto.SHA256, SchemeEd25519, "ed25519", "x25519"},
	{MLS256DHKEMX448AES256GCMSHA512Ed448, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
		KEMX448, KDFHKDFSHA512, AEADAES256GCM, crypto.SHA512, SchemeEd448, "ed448", "x448"},
	{MLS256DHKEMP521AES256GCMSHA512P521, "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
		KEMP521, KDFHKDFSHA512, AEADAES256GCM, crypto.SHA512, SchemeECDSAP521SHA512, "ecdsa-p521", "ecdh-p521"},
	{MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448, "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
		KEMX448, KDFHKDFSHA512, AEADChaCha20Poly1305, crypto.SHA512, SchemeEd448, "ed448", "x448"},
	{MLS256DHKEMP384AES256GCMSHA384P384, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
		KEMP384, KDFHKDFSHA384, AEADAES256GCM, crypto.SHA384, SchemeECDSAP384SHA384, "ecdsa-p384", "ecdh-p384"},
}

// LookupSuite returns the description of id, or ErrUnknownSuite. The
// returned Suite is shared; callers must not modify it.
func LookupSuite(id CipherSuite) (*Suite, error) {
	if id >= 1 && int(id) <= len(suites) {
		return suites[id-1], nil
	}
	return nil, fmt.Errorf("%w: 0x%04x", ErrUnknownSuite, uint16(id))
}

// Suites returns all supported suites in identifier order.
func Suites() []*Suite { return append([]*Suite(nil), suites...) }

// ParseSuite accepts a decimal or 0x-prefixed hexadecimal identifier, or an
// RFC 9420 suite name in any letter case.
func ParseSuite(s string) (CipherSuite, error) {
	t := strings.TrimSpace(s)
	for _, su := range suites {
		if strings.EqualFold(t, su.Name) {
			return su.ID, nil
		}
	}
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(t), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 16)
	} else {
		v, err = strconv.ParseUint(t, 10, 16)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrUnknownSuite, s)
	}
	if _, err := LookupSuite(CipherSuite(v)); err != nil {
		return 0, err
	}
	return CipherSuite(v), nil
}

// String returns the RFC name of a known suite, or its hex value.
func (c CipherSuite) String() string {
	if s, err := LookupSuite(c); err == nil {
		return s.Name
	}
	return fmt.Sprintf("0x%04x", uint16(c))
}

// HashSize returns Nh, the output length of the suite hash.
func (s *Suite) HashSize() int { return s.Hash.Size() }

// AEADKeySize returns Nk.
func (s *Suite) AEADKeySize() int {
	if s.AEAD == AEADAES128GCM {
		return 16
	}
	return 32
}

// AEADNonceSize returns Nn; all MLS AEADs use 96-bit nonces.
func (s *Suite) AEADNonceSize() int { return 12 }

// NewAEAD returns the suite AEAD keyed with key.
func (s *Suite) NewAEAD(key []byte) (cipher.AEAD, error) {
	return newAEAD(s.AEAD, key)
}

func newAEAD(id uint16, key []byte) (cipher.AEAD, error) {
	switch id {
	case AEADAES128GCM, AEADAES256GCM:
		want := 16
		if id == AEADAES256GCM {
			want = 32
		}
		if len(key) != want {
			return nil, fmt.Errorf("mls: AEAD key of %d bytes, want %d", len(key), want)
		}
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	case AEADChaCha20Poly1305:
		// The standard library keeps its ChaCha20-Poly1305 internal.
		if len(key) != chacha20poly1305.KeySize {
			return nil, fmt.Errorf("mls: AEAD key of %d bytes, want %d", len(key), chacha20poly1305.KeySize)
		}
		return chacha20poly1305.New(key)
	}
	return nil, fmt.Errorf("mls: unknown AEAD 0x%04x", id)
}

// Extract is HKDF-Extract with the suite hash.
func (s *Suite) Extract(salt, ikm []byte) ([]byte, error) {
	return hkdf.Extract(s.Hash.New, ikm, salt)
}

// Expand is HKDF-Expand with the suite hash.
func (s *Suite) Expand(prk, info []byte, length int) ([]byte, error) {
	return hkdf.Expand(s.Hash.New, prk, string(info), length)
}

// ExpandWithLabel implements §8: HKDF-Expand with an encoded KDFLabel as info.
func (s *Suite) ExpandWithLabel(secret []byte, label string, context []byte, length int) ([]byte, error) {
	if length < 0 || length > 0xffff {
		return nil, fmt.Errorf("mls: ExpandWithLabel length %d out of range", length)
	}
	out, err := s.Expand(secret, kdfLabel(length, label, context), length)
	if err != nil {
		return nil, fmt.Errorf("mls: ExpandWithLabel %q: %w", label, err)
	}
	return out, nil
}

// DeriveSecret implements §8: ExpandWithLabel(secret, label, "", Nh).
func (s *Suite) DeriveSecret(secret []byte, label string) ([]byte, error) {
	return s.ExpandWithLabel(secret, label, nil, s.HashSize())
}

// DeriveTreeSecret implements §9: ExpandWithLabel with the generation as a
// big-endian uint32 context.
func (s *Suite) DeriveTreeSecret(secret []byte, label string, generation uint32, length int) ([]byte, error) {
	return s.ExpandWithLabel(secret, label, uint32Bytes(generation), length)
}

// RefHash implements §5.2. The label is used exactly as given; callers pass
// e.g. "MLS 1.0 KeyPackage Reference".
func (s *Suite) RefHash(label string, value []byte) []byte {
	w := NewWriter()
	w.Vector([]byte(label))
	w.Vector(value)
	h := s.Hash.New()
	h.Write(w.Bytes())
	return h.Sum(nil)
}

// KeyPackageRef returns the KeyPackageRef of an encoded KeyPackage (the
// KeyPackage itself, not the MLSMessage wrapping it).
func (s *Suite) KeyPackageRef(keyPackage []byte) []byte {
	return s.RefHash("MLS 1.0 KeyPackage Reference", keyPackage)
}

// MAC computes HMAC with the suite hash.
func (s *Suite) MAC(key, data []byte) []byte {
	m := hmac.New(s.Hash.New, key)
	m.Write(data)
	return m.Sum(nil)
}
