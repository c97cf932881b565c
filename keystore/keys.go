package keystore

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// Inside the daemon a device key is a standard-library key: a crypto.Signer
// for signatures and an ecdh.KeyExchanger for HPKE, so crypto/hpke and
// crypto/x509 work with it unchanged. Both carry the context of the request
// they serve, since the standard interfaces have no context parameter.

// Signer is a catalog signature key as a crypto.Signer.
type Signer struct {
	s   *Store
	ctx context.Context
	rec *Record
	pub crypto.PublicKey
}

// SignerFor wraps a record, including one of an uncommitted Batch, so a
// new KeyPackage can be signed before its keys are committed.
func (s *Store) SignerFor(ctx context.Context, r *Record) (*Signer, error) {
	if r.Role != RoleSignature {
		return nil, kinded(ErrWrongRole, "key %q is %s key, not a signature key", r.ID, aRole(r.Role))
	}
	pub, err := publicKey(r.Algorithm, r.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", r.ID, err)
	}
	return &Signer{s: s, ctx: ctx, rec: r, pub: pub}, nil
}

// Record returns the key's catalog record.
func (k *Signer) Record() *Record { return k.rec }

// Public returns an ed25519.PublicKey, a circl ed448.PublicKey or an
// *ecdsa.PublicKey.
func (k *Signer) Public() crypto.PublicKey { return k.pub }

// Sign follows crypto.Signer: for ECDSA, digest is the hash and the result
// is ASN.1 DER; for EdDSA, opts.HashFunc() must be 0 and digest is the
// whole message.
func (k *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg := k.rec.Algorithm
	switch alg {
	case Ed25519, Ed448:
		if opts != nil && opts.HashFunc() != 0 {
			return nil, fmt.Errorf("%s signs whole messages, not %v digests: %w", alg, opts.HashFunc(), ErrInvalidArgument)
		}
	default:
		if opts == nil || opts.HashFunc() == 0 || len(digest) != opts.HashFunc().Size() {
			return nil, fmt.Errorf("%s needs a digest matching its hash option: %w", alg, ErrInvalidArgument)
		}
	}
	var sig []byte
	err := k.s.withPrivate(k.ctx, k.rec, "sign",
		func() (err error) { sig, err = k.s.be.Sign(k.ctx, k.rec.DeviceRef, alg, digest); return },
		func(priv []byte) (err error) { sig, err = softSign(alg, priv, digest); return })
	if err != nil {
		return nil, err
	}
	if n := coordLen(alg); n > 0 {
		return rawToDER(sig, n)
	}
	return sig, nil
}

// withPrivate runs the hardware or the sealed variant of an operation. The
// sealed variant sees the private key only for the call; it is wiped after.
func (s *Store) withPrivate(ctx context.Context, r *Record, op string, hw func() error, sealed func(priv []byte) error) error {
	switch r.Protection {
	case ProtectionHardware:
		if err := hw(); err != nil {
			if errors.Is(err, ErrInvalidPeerKey) || errors.Is(err, ErrInvalidArgument) {
				return err
			}
			return &DeviceError{Op: op + " with key " + r.ID, Err: err}
		}
		return nil
	case ProtectionSealed:
		if s.sealer == nil {
			return fmt.Errorf("key %q is sealed but the device cannot unseal: %w", r.ID, ErrUnsupportedAlgorithm)
		}
		priv, err := s.sealer.Unseal(ctx, r.Sealed, sealAAD(r))
		if errors.Is(err, ErrEpochDestroyed) {
			// A rotation may have moved the key to a newer epoch since the
			// caller read the record.
			if cur, gerr := s.cat.get(r.ID); gerr == nil && cur.Live() && cur.Epoch != r.Epoch {
				priv, err = s.sealer.Unseal(ctx, cur.Sealed, sealAAD(cur))
			}
		}
		if err != nil {
			return &DeviceError{Op: "unseal key " + r.ID, Err: err}
		}
		defer clear(priv)
		return sealed(priv)
	}
	return fmt.Errorf("key %q has protection %q: %w", r.ID, r.Protection, ErrUnsupportedAlgorithm)
}

// dh is the device-neutral ECDH used by both HPKE key types. It refuses an
// all-zero shared secret: that is what a low-order X25519/X448 peer point
// yields, and RFC 7748 §6 says to abort on it.
func (s *Store) dh(ctx context.Context, r *Record, peer []byte) ([]byte, error) {
	var z []byte
	var err error
	if r.Protection == ProtectionWrapped {
		z, err = s.wrappedDH(ctx, r, peer)
	} else {
		err = s.withPrivate(ctx, r, "ecdh",
			func() (err error) { z, err = s.be.ECDH(ctx, r.DeviceRef, r.Algorithm, peer); return },
			func(priv []byte) (err error) { z, err = softECDH(r.Algorithm, priv, peer); return })
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(z, make([]byte, len(z))) == 1 {
		return nil, fmt.Errorf("all-zero shared secret (low-order point): %w", ErrInvalidPeerKey)
	}
	return z, nil
}

func (s *Store) hpkeKey(ctx context.Context, r *Record) (any, error) {
	if r.Role == RoleSignature {
		return nil, kinded(ErrWrongRole, "key %q is a signature key, not an HPKE key", r.ID)
	}
	if r.Algorithm == X448 {
		return &x448Key{s: s, ctx: ctx, rec: r}, nil
	}
	c := ecdhCurve(r.Algorithm)
	if c == nil {
		return nil, fmt.Errorf("key %q: %s: %w", r.ID, r.Algorithm, ErrUnsupportedAlgorithm)
	}
	pub, err := c.NewPublicKey(r.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("key %q has a bad public key: %w", r.ID, err)
	}
	return &ecdhKey{s: s, ctx: ctx, rec: r, pub: pub}, nil
}

// ecdhKey implements ecdh.KeyExchanger over the device.
type ecdhKey struct {
	s   *Store
	ctx context.Context
	rec *Record
	pub *ecdh.PublicKey
}

func (k *ecdhKey) PublicKey() *ecdh.PublicKey { return k.pub }
func (k *ecdhKey) Curve() ecdh.Curve          { return k.pub.Curve() }

// ECDH receives a peer key crypto/ecdh has already parsed, so NIST points
// are on the curve before they reach the device.
func (k *ecdhKey) ECDH(peer *ecdh.PublicKey) ([]byte, error) {
	if peer.Curve() != k.pub.Curve() {
		return nil, fmt.Errorf("peer key on another curve: %w", ErrInvalidPeerKey)
	}
	return k.s.dh(k.ctx, k.rec, peer.Bytes())
}

// x448Key is the X448 counterpart; mls defines the interface it meets.
type x448Key struct {
	s   *Store
	ctx context.Context
	rec *Record
}

func (k *x448Key) X448PublicKey() []byte { return k.rec.PublicKey }

func (k *x448Key) X448(peer []byte) ([]byte, error) {
	if len(peer) != 56 {
		return nil, fmt.Errorf("X448 peer key of %d bytes: %w", len(peer), ErrInvalidPeerKey)
	}
	return k.s.dh(k.ctx, k.rec, peer)
}

var _ ecdh.KeyExchanger = (*ecdhKey)(nil)
var _ crypto.Signer = (*Signer)(nil)
