package keystore

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/cloudflare/circl/dh/x448"
	"github.com/cloudflare/circl/sign/ed448"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The software side of the keystore: key generation and operations for
// protection level sealed, and the encodings shared with device keys.
// Private keys handled here are the raw forms: the RFC 8032 seed for EdDSA,
// the scalar for ECDSA and ECDH, the RFC 7748 scalar for X25519/X448.

func ecdhCurve(alg Algorithm) ecdh.Curve {
	switch alg {
	case X25519:
		return ecdh.X25519()
	case ECDHP256:
		return ecdh.P256()
	case ECDHP384:
		return ecdh.P384()
	case ECDHP521:
		return ecdh.P521()
	}
	return nil
}

func ecdsaCurve(alg Algorithm) elliptic.Curve {
	switch alg {
	case ECDSAP256:
		return elliptic.P256()
	case ECDSAP384:
		return elliptic.P384()
	case ECDSAP521:
		return elliptic.P521()
	}
	return nil
}

// softGenerate returns a fresh private key and its public key in the MLS
// encoding Backend.Generate documents.
func softGenerate(alg Algorithm) (priv, pub []byte, err error) {
	switch alg {
	case Ed25519:
		p, s, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		defer wipeKey(s)
		return s.Seed(), p, nil
	case Ed448:
		p, s, err := ed448.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		defer wipeKey(s)
		return s.Seed(), p, nil
	case X448:
		var s, p x448.Key
		if _, err := rand.Read(s[:]); err != nil {
			return nil, nil, err
		}
		x448.KeyGen(&p, &s)
		return s[:], p[:], nil
	case ECDSAP256, ECDSAP384, ECDSAP521:
		k, err := ecdsa.GenerateKey(ecdsaCurve(alg), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		defer wipeKey(k)
		s, err := k.Bytes()
		if err != nil {
			return nil, nil, err
		}
		p, err := k.PublicKey.Bytes()
		if err != nil {
			return nil, nil, err
		}
		return s, p, nil
	}
	if c := ecdhCurve(alg); c != nil {
		k, err := c.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		return k.Bytes(), k.PublicKey().Bytes(), nil
	}
	return nil, nil, fmt.Errorf("%s: %w", alg, ErrUnsupportedAlgorithm)
}

// wipeKey zeroes what Go lets the daemon reach of a software private key
// built from an unsealed one: the 64-byte Ed25519 and 114-byte Ed448
// private keys (seed and public key), and an ECDSA key's scalar D. Copies
// inside the standard library and circl (the expanded Ed25519/Ed448
// scalar and prefix while signing, crypto/ecdsa's and crypto/ecdh's
// internal key forms) are not reachable and are left to the garbage
// collector; docs/security.md says so.
func wipeKey(k any) {
	switch k := k.(type) {
	case ed25519.PrivateKey:
		clear(k)
	case ed448.PrivateKey:
		clear(k)
	case *ecdsa.PrivateKey:
		if k.D != nil {
			clear(k.D.Bits())
		}
	}
}

// softSign follows Backend.Sign's conventions: ECDSA gets a digest and
// answers raw r||s, so device and software keys share one conversion path.
func softSign(alg Algorithm, priv, msg []byte) ([]byte, error) {
	switch alg {
	case Ed25519:
		if len(priv) != ed25519.SeedSize {
			return nil, errors.New("bad Ed25519 seed length")
		}
		k := ed25519.NewKeyFromSeed(priv)
		defer wipeKey(k)
		return ed25519.Sign(k, msg), nil
	case Ed448:
		if len(priv) != ed448.SeedSize {
			return nil, errors.New("bad Ed448 seed length")
		}
		k := ed448.NewKeyFromSeed(priv)
		defer wipeKey(k)
		return ed448.Sign(k, msg, ""), nil
	case ECDSAP256, ECDSAP384, ECDSAP521:
		k, err := ecdsa.ParseRawPrivateKey(ecdsaCurve(alg), priv)
		if err != nil {
			return nil, err
		}
		defer wipeKey(k)
		der, err := ecdsa.SignASN1(rand.Reader, k, msg)
		if err != nil {
			return nil, err
		}
		return derToRaw(der, coordLen(alg))
	}
	return nil, fmt.Errorf("%s cannot sign: %w", alg, ErrUnsupportedAlgorithm)
}

func softECDH(alg Algorithm, priv, peer []byte) ([]byte, error) {
	if alg == X448 {
		var s, p, out x448.Key
		if len(priv) != x448.Size || len(peer) != x448.Size {
			return nil, fmt.Errorf("X448 key length: %w", ErrInvalidPeerKey)
		}
		copy(s[:], priv)
		copy(p[:], peer)
		if !x448.Shared(&out, &s, &p) {
			return nil, fmt.Errorf("X448 low-order point: %w", ErrInvalidPeerKey)
		}
		clear(s[:])
		return out[:], nil
	}
	c := ecdhCurve(alg)
	if c == nil {
		return nil, fmt.Errorf("%s cannot do ECDH: %w", alg, ErrUnsupportedAlgorithm)
	}
	k, err := c.NewPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	p, err := c.NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPeerKey, err)
	}
	z, err := k.ECDH(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPeerKey, err)
	}
	return z, nil
}

// coordLen is the byte length of r and s (and of a coordinate).
func coordLen(alg Algorithm) int {
	switch alg {
	case ECDSAP256, ECDHP256:
		return 32
	case ECDSAP384, ECDHP384:
		return 48
	case ECDSAP521, ECDHP521:
		return 66
	}
	return 0
}

type ecdsaSig struct{ R, S *big.Int }

// rawToDER converts a device's fixed-width r||s into the ASN.1 DER
// Ecdsa-Sig-Value MLS uses. Fixed width matters: P-521 values often have
// leading zero bytes, and cutting at the wrong place breaks verification.
func rawToDER(raw []byte, n int) ([]byte, error) {
	if n == 0 || len(raw) != 2*n {
		return nil, fmt.Errorf("device returned a %d-byte ECDSA signature, want %d", len(raw), 2*n)
	}
	r, s := bytes.TrimLeft(raw[:n], "\x00"), bytes.TrimLeft(raw[n:], "\x00")
	if len(r) == 0 || len(s) == 0 {
		return nil, errors.New("device returned an ECDSA signature with a zero component")
	}
	// Built directly rather than through math/big and encoding/asn1:
	// this runs for every ECDSA signature, and they were a few percent of
	// its CPU through the daemon.
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		addUnsignedInt(b, r)
		addUnsignedInt(b, s)
	})
	return b.Bytes()
}

// addUnsignedInt adds a DER INTEGER of the big-endian unsigned value v,
// which has no leading zero bytes and is not empty.
func addUnsignedInt(b *cryptobyte.Builder, v []byte) {
	b.AddASN1(cbasn1.INTEGER, func(b *cryptobyte.Builder) {
		if v[0]&0x80 != 0 {
			b.AddUint8(0) // positive, not a negative two's complement
		}
		b.AddBytes(v)
	})
}

func derToRaw(der []byte, n int) ([]byte, error) {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("malformed ECDSA signature")
	}
	raw := make([]byte, 2*n)
	sig.R.FillBytes(raw[:n])
	sig.S.FillBytes(raw[n:])
	return raw, nil
}

// publicKey turns an MLS-encoded signature public key into the value
// crypto.Signer.Public returns.
func publicKey(alg Algorithm, pub []byte) (crypto.PublicKey, error) {
	switch alg {
	case Ed25519:
		if len(pub) != ed25519.PublicKeySize {
			return nil, errors.New("bad Ed25519 public key length")
		}
		return ed25519.PublicKey(pub), nil
	case Ed448:
		if len(pub) != ed448.PublicKeySize {
			return nil, errors.New("bad Ed448 public key length")
		}
		return ed448.PublicKey(pub), nil
	case ECDSAP256, ECDSAP384, ECDSAP521:
		return ecdsa.ParseUncompressedPublicKey(ecdsaCurve(alg), pub)
	}
	return nil, fmt.Errorf("%s: %w", alg, ErrUnsupportedAlgorithm)
}
