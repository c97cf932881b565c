package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// probe decides, by trying, which algorithms the token can generate and use:
// for each one it makes a session key pair, runs the operation and checks
// the result against Go where Go can. X25519 and X448 try the PKCS#11 3.0
// Montgomery generator first (if listed), then SoftHSM 2.6's Edwards
// generator with the Montgomery curve OID.
//
// It returns the working algorithms and, for the others, why not; Open
// stores them, and a reconnect compares them with what Open found.
func (b *Backend) probe(ctx context.Context) (map[keystore.Algorithm]*algSpec, map[keystore.Algorithm]string, error) {
	mechList, err := b.mod.ctx.GetMechanismList(b.slot)
	if err != nil {
		return nil, nil, fmt.Errorf("C_GetMechanismList: %w", err)
	}
	has := map[uint]bool{}
	for _, m := range mechList {
		has[m.Mechanism] = true
	}
	specs := map[keystore.Algorithm]*algSpec{}
	notes := map[keystore.Algorithm]string{}
	for _, alg := range keystore.Algorithms {
		base := baseSpecs()[alg]
		var candidates []*algSpec
		if alg == keystore.X25519 || alg == keystore.X448 {
			if has[ckmECMontgomeryKeyPairGen] {
				c := *base
				c.route = RouteMontgomery
				candidates = append(candidates, &c)
			}
			if has[ckmECEdwardsKeyPairGen] {
				c := *base
				c.keyType, c.genMech, c.route = ckkECEdwards, ckmECEdwardsKeyPairGen, RouteEdwardsQuirk
				candidates = append(candidates, &c)
			}
		} else if has[base.genMech] {
			base.route = RouteStandard
			candidates = append(candidates, base)
		}
		var why []string
		if !has[base.opMech] {
			candidates = nil
			why = append(why, mechName(base.opMech)+" not offered")
		} else if len(candidates) == 0 {
			why = append(why, mechName(base.genMech)+" not offered")
		}
		for _, c := range candidates {
			err := b.withSession(ctx, "probe", func(s p11.SessionHandle) error { return b.tryAlg(s, c) })
			if err == nil {
				specs[alg] = c
				break
			}
			// A lost device is not a missing algorithm.
			if ctx.Err() != nil || errors.Is(err, ErrClosed) || errors.Is(err, keystore.ErrDeviceUnavailable) || deviceGone(err) {
				return nil, nil, err
			}
			why = append(why, fmt.Sprintf("%s: %v", c.route, err))
		}
		if specs[alg] == nil {
			if len(why) == 0 {
				why = append(why, "mechanisms not offered")
			}
			notes[alg] = strings.Join(why, "; ")
		}
	}
	return specs, notes, nil
}

// tryAlg generates a session key pair for spec and checks one operation.
func (b *Backend) tryAlg(s p11.SessionHandle, spec *algSpec) error {
	pubH, privH, pub, err := b.generateIn(s, spec, "probe", false)
	if err != nil {
		return err
	}
	defer func() {
		_ = b.mod.ctx.DestroyObject(s, privH)
		_ = b.mod.ctx.DestroyObject(s, pubH)
	}()
	msg := []byte("mlskeyd pkcs11 probe")
	digest := sha256.Sum256(msg)
	switch spec.alg {
	case keystore.Ed25519:
		sig, err := b.signIn(s, spec, privH, msg)
		if err != nil {
			return err
		}
		if !ed25519.Verify(ed25519.PublicKey(pub), msg, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
	case keystore.Ed448:
		// No Ed448 in the standard library: the length check must do.
		if _, err := b.signIn(s, spec, privH, msg); err != nil {
			return err
		}
	case keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDSAP521:
		sig, err := b.signIn(s, spec, privH, digest[:])
		if err != nil {
			return err
		}
		curve := map[keystore.Algorithm]elliptic.Curve{
			keystore.ECDSAP256: elliptic.P256(), keystore.ECDSAP384: elliptic.P384(), keystore.ECDSAP521: elliptic.P521(),
		}[spec.alg]
		k, err := ecdsa.ParseUncompressedPublicKey(curve, pub)
		if err != nil {
			return fmt.Errorf("public key: %w", err)
		}
		half := len(sig) / 2
		r, ss := new(big.Int).SetBytes(sig[:half]), new(big.Int).SetBytes(sig[half:])
		if !ecdsa.Verify(k, digest[:], r, ss) {
			return errors.New("ECDSA signature does not verify")
		}
	case keystore.X448:
		// Check the DH against a second device key, both ways.
		pubH2, privH2, pub2, err := b.generateIn(s, spec, "probe2", false)
		if err != nil {
			return err
		}
		defer func() {
			_ = b.mod.ctx.DestroyObject(s, privH2)
			_ = b.mod.ctx.DestroyObject(s, pubH2)
		}()
		z1, err := b.deriveIn(s, spec, privH, pub2)
		if err != nil {
			return err
		}
		z2, err := b.deriveIn(s, spec, privH2, pub)
		if err != nil {
			return err
		}
		if !bytes.Equal(z1, z2) {
			return errors.New("X448 shared secrets differ")
		}
	default: // X25519 and NIST ECDH: compare with crypto/ecdh
		curve := map[keystore.Algorithm]ecdh.Curve{
			keystore.X25519: ecdh.X25519(), keystore.ECDHP256: ecdh.P256(), keystore.ECDHP384: ecdh.P384(), keystore.ECDHP521: ecdh.P521(),
		}[spec.alg]
		peer, err := curve.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		z, err := b.deriveIn(s, spec, privH, peer.PublicKey().Bytes())
		if err != nil {
			return err
		}
		devPub, err := curve.NewPublicKey(pub)
		if err != nil {
			return fmt.Errorf("public key: %w", err)
		}
		want, err := peer.ECDH(devPub)
		if err != nil {
			return err
		}
		if !bytes.Equal(z, want) {
			return errors.New("shared secret differs from crypto/ecdh")
		}
	}
	return nil
}
