package pkcs11

import (
	"context"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// keyPairTemplates builds the templates for a key pair. token=false makes
// session objects (used by the probe).
func keyPairTemplates(spec *algSpec, id string, token bool) (pub, priv []*p11.Attribute) {
	label := labelPrefix + id
	pub = []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, spec.keyType),
		p11.NewAttribute(p11.CKA_TOKEN, token),
		// The public half is public: CKA_PRIVATE=false lets it be read and
		// listed without relying on the login, and hides nothing secret.
		p11.NewAttribute(p11.CKA_PRIVATE, false),
		p11.NewAttribute(p11.CKA_EC_PARAMS, spec.ecParams()),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
	priv = []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, spec.keyType),
		p11.NewAttribute(p11.CKA_TOKEN, token),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		// SoftHSM defaults CKA_SENSITIVE to false: always set both.
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
	if spec.sign {
		pub = append(pub, p11.NewAttribute(p11.CKA_VERIFY, true))
		priv = append(priv, p11.NewAttribute(p11.CKA_SIGN, true), p11.NewAttribute(p11.CKA_DERIVE, false))
	} else {
		priv = append(priv, p11.NewAttribute(p11.CKA_DERIVE, true), p11.NewAttribute(p11.CKA_SIGN, false))
	}
	return pub, priv
}

// generateIn makes a key pair on session s and returns its handles and the
// public key in MLS form. On failure nothing is left behind.
func (b *Backend) generateIn(s p11.SessionHandle, spec *algSpec, id string, token bool) (pubH, privH p11.ObjectHandle, pub []byte, err error) {
	pt, kt := keyPairTemplates(spec, id, token)
	mech := []*p11.Mechanism{p11.NewMechanism(spec.genMech, nil)}
	gen := func() error {
		var err error
		pubH, privH, err = b.mod.ctx.GenerateKeyPair(s, mech, pt, kt)
		return err
	}
	if token {
		err = b.tokenWrite(gen)
	} else {
		err = gen()
	}
	if err != nil {
		return 0, 0, nil, fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	attrs, err := b.mod.ctx.GetAttributeValue(s, pubH, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
	if err == nil {
		var ok bool
		if pub, ok = decodeECPoint(attrs[0].Value, spec.pubLen); !ok {
			err = fmt.Errorf("unexpected CKA_EC_POINT of %d bytes", len(attrs[0].Value))
		} else if spec.nist && pub[0] != 4 {
			err = fmt.Errorf("CKA_EC_POINT is not an uncompressed point")
		}
	} else {
		err = fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
	}
	if err != nil {
		_ = b.mod.ctx.DestroyObject(s, privH)
		_ = b.mod.ctx.DestroyObject(s, pubH)
		return 0, 0, nil, err
	}
	return pubH, privH, pub, nil
}

// Generate creates a token key pair with CKA_ID=id and CKA_LABEL="mlskeyd:"+id
// on both halves. The private half is sensitive and never extractable.
//
// It does not search the token first: a token search is linear in the
// token's objects on SoftHSM, and two of them before every key pair made
// KeyPackage creation slower the fuller the token got. The id must be new;
// the keystore's ids are unique by construction (time and 80 random bits),
// and keys a crash left behind are found by label at start-up (List), not
// here.
func (b *Backend) Generate(ctx context.Context, id string, alg keystore.Algorithm) ([]byte, []byte, error) {
	if err := checkID(id); err != nil {
		return nil, nil, err
	}
	spec, err := b.spec(alg)
	if err != nil {
		return nil, nil, err
	}
	var pub []byte
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	b.dropStartupKeys()
	err = b.withSession(ctx, "generate", func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		pubH, privH, p, err := b.generateIn(s, spec, id, true)
		if err != nil {
			return err
		}
		pub = p
		b.cache.put(objKey{p11.CKO_PRIVATE_KEY, id}, privH)
		b.cache.put(objKey{p11.CKO_PUBLIC_KEY, id}, pubH)
		return nil
	})
	if err != nil {
		return nil, nil, devErr("generate "+string(alg), err)
	}
	return EncodeRef(id), pub, nil
}

// Sign signs msg (the digest for ECDSA, the message for EdDSA) with one
// single-part C_Sign. ECDSA results are the raw r||s.
func (b *Backend) Sign(ctx context.Context, ref []byte, alg keystore.Algorithm, msg []byte) ([]byte, error) {
	id, err := DecodeRef(ref)
	if err != nil {
		return nil, err
	}
	spec, err := b.spec(alg)
	if err != nil {
		return nil, err
	}
	if !spec.sign {
		return nil, fmt.Errorf("%w: %s does not sign", keystore.ErrWrongRole, alg)
	}
	if spec.nist && len(msg) == 0 {
		return nil, fmt.Errorf("%w: empty digest", keystore.ErrInvalidArgument)
	}
	var sig []byte
	err = b.withKey(ctx, "sign", objKey{p11.CKO_PRIVATE_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		var err error
		sig, err = b.signIn(s, spec, h, msg)
		return err
	}, spec.keyTypes()...)
	if err != nil {
		return nil, devErr("sign "+string(alg), err)
	}
	return sig, nil
}

func (b *Backend) signIn(s p11.SessionHandle, spec *algSpec, h p11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := b.mod.ctx.SignInit(s, []*p11.Mechanism{p11.NewMechanism(spec.opMech, nil)}, h); err != nil {
		return nil, fmt.Errorf("C_SignInit: %w", err)
	}
	sig, err := b.mod.ctx.Sign(s, msg)
	if err != nil {
		return nil, fmt.Errorf("C_Sign: %w", err)
	}
	if len(sig) != spec.outLen {
		return nil, fmt.Errorf("signature of %d bytes, want %d", len(sig), spec.outLen)
	}
	return sig, nil
}

// ECDH derives the raw shared secret with CKM_ECDH1_DERIVE (CKD_NULL) into
// a short-lived session object, reads it and destroys it at once.
func (b *Backend) ECDH(ctx context.Context, ref []byte, alg keystore.Algorithm, peer []byte) ([]byte, error) {
	id, err := DecodeRef(ref)
	if err != nil {
		return nil, err
	}
	spec, err := b.agreementSpec(alg, peer)
	if err != nil {
		return nil, err
	}
	var z []byte
	err = b.withKey(ctx, "ecdh", objKey{p11.CKO_PRIVATE_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		var err error
		z, err = b.deriveIn(s, spec, h, peer)
		return err
	}, spec.keyTypes()...)
	if err != nil {
		return nil, devErr("ecdh "+string(alg), err)
	}
	return z, nil
}

// agreementSpec is alg's spec when alg is a key-agreement algorithm and
// peer has its public-key form; the token is not asked about a peer the
// daemon can refuse itself.
func (b *Backend) agreementSpec(alg keystore.Algorithm, peer []byte) (*algSpec, error) {
	spec, err := b.spec(alg)
	if err != nil {
		return nil, err
	}
	if spec.sign {
		return nil, fmt.Errorf("%w: %s is not a key-agreement algorithm", keystore.ErrWrongRole, alg)
	}
	if len(peer) != spec.pubLen || (spec.nist && peer[0] != 4) {
		return nil, devErr("ecdh "+string(alg), fmt.Errorf("%w: %d bytes", keystore.ErrInvalidPeerKey, len(peer)))
	}
	return spec, nil
}

func (b *Backend) deriveIn(s p11.SessionHandle, spec *algSpec, h p11.ObjectHandle, peer []byte) (z []byte, err error) {
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_ECDH1_DERIVE, p11.NewECDH1DeriveParams(p11.CKD_NULL, nil, peer))}
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, false),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
		// no CKA_VALUE_LEN: a short one keeps the rightmost bytes
	}
	dh, err := b.mod.ctx.DeriveKey(s, mech, h, tmpl)
	if err != nil {
		if isCode(err, p11.CKR_GENERAL_ERROR, p11.CKR_DOMAIN_PARAMS_INVALID, p11.CKR_MECHANISM_PARAM_INVALID) {
			// SoftHSM reports off-curve and low-order peers as CKR_GENERAL_ERROR.
			return nil, fmt.Errorf("C_DeriveKey: %w: %w", keystore.ErrInvalidPeerKey, err)
		}
		return nil, fmt.Errorf("C_DeriveKey: %w", err)
	}
	defer func() {
		if derr := b.mod.ctx.DestroyObject(s, dh); derr != nil {
			z = nil
			// Closing the session destroys the session object.
			err = &poisoned{fmt.Errorf("C_DestroyObject(derived secret): %w", derr)}
		}
	}()
	attrs, err := b.mod.ctx.GetAttributeValue(s, dh, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue(derived secret): %w", err)
	}
	z = attrs[0].Value
	if len(z) != spec.outLen {
		clear(z)
		return nil, fmt.Errorf("shared secret of %d bytes, want %d", len(z), spec.outLen)
	}
	allZero := byte(0)
	for _, c := range z {
		allZero |= c
	}
	if allZero == 0 {
		return nil, fmt.Errorf("%w: all-zero shared secret", keystore.ErrInvalidPeerKey)
	}
	return z, nil
}
