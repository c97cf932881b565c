package pkcs11

import (
	"context"
	"crypto/elliptic"
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// setUpWrapping finds out, with throwaway session keys, which key-agreement
// algorithms the token can wrap: generate, wrap with AES-KWP, unwrap, and
// derive with the base point, which must give the public key. SoftHSM
// 2.6.1 unwraps NIST-curve keys but not its Edwards-typed X25519/X448
// keys; the keystore then keeps those at their other level.
//
// It also finds out whether a user session may mark the wrapping key
// CKA_TRUSTED (most tokens, SoftHSM included, allow that to the security
// officer only). Without it the wrapped keys cannot carry
// CKA_WRAP_WITH_TRUSTED: they are extractable session objects for the
// few microseconds between generation and wrapping, visible only to this
// process's sessions (docs/security.md).
//
// Like setUpSealing it records failures and returns only a lost device
// or session.
func (b *Backend) setUpWrapping(ctx context.Context) error {
	st := wrapState{algs: map[keystore.Algorithm]bool{}, notes: map[keystore.Algorithm]string{}}
	var kas []*algSpec
	for _, alg := range keystore.Algorithms {
		if spec, ok := b.specs[alg]; ok && !spec.sign {
			kas = append(kas, spec)
		}
	}
	noteAll := func(why string) {
		for _, spec := range kas {
			st.notes[spec.alg] = why
		}
	}
	mechs, err := b.mod.ctx.GetMechanismList(b.slot)
	if err != nil {
		return fmt.Errorf("C_GetMechanismList: %w", err)
	}
	has := map[uint]bool{}
	for _, m := range mechs {
		has[m.Mechanism] = true
	}
	var fatal error
	switch {
	case !has[p11.CKM_AES_KEY_WRAP_PAD] || !has[p11.CKM_AES_KEY_GEN]:
		noteAll("the token offers no CKM_AES_KEY_WRAP_PAD")
	default:
		err := b.withSession(ctx, "probe", func(s p11.SessionHandle) error {
			st.trusted = true
			wh, err := b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, wrapKeyTemplate("probe", false, true))
			if err != nil {
				if sessionLost(err) || deviceGone(err) {
					return err
				}
				st.trusted, st.trustNote = false, fmt.Sprintf("a user session cannot set CKA_TRUSTED (%v); wrapped keys are extractable session objects until wrapped", err)
				wh, err = b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, wrapKeyTemplate("probe", false, false))
			}
			if err != nil {
				if sessionLost(err) || deviceGone(err) {
					return err
				}
				noteAll(fmt.Sprintf("no AES wrapping key: C_GenerateKey: %v", err))
				return nil
			}
			defer func() { _ = b.mod.ctx.DestroyObject(s, wh) }()
			for _, spec := range kas {
				err := b.probeWrap(s, wh, spec, st.trusted)
				if sessionLost(err) || deviceGone(err) {
					return err
				}
				if err != nil {
					st.notes[spec.alg] = fmt.Sprintf("the token does not round-trip %s keys through C_WrapKey/C_UnwrapKey (AES-KWP): %v", spec.alg, err)
					continue
				}
				st.algs[spec.alg] = true
			}
			return nil
		})
		if err != nil {
			fatal = err
		}
	}
	if fatal != nil {
		return fatal
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sealMu.Lock()
	b.wrap = st
	b.sealMu.Unlock()
	return nil
}

// probeWrap wraps and unwraps one throwaway key of spec and checks that
// the unwrapped key is the one generated.
func (b *Backend) probeWrap(s p11.SessionHandle, wh p11.ObjectHandle, spec *algSpec, trusted bool) (err error) {
	pt, kt := b.wrappableTemplates(spec, "probe", trusted)
	pubH, privH, err := b.mod.ctx.GenerateKeyPair(s, []*p11.Mechanism{p11.NewMechanism(spec.genMech, nil)}, pt, kt)
	if err != nil {
		return fmt.Errorf("C_GenerateKeyPair(extractable): %w", err)
	}
	defer func() {
		_ = b.mod.ctx.DestroyObject(s, privH)
		_ = b.mod.ctx.DestroyObject(s, pubH)
	}()
	attrs, err := b.mod.ctx.GetAttributeValue(s, pubH, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
	if err != nil {
		return fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
	}
	pub, ok := decodeECPoint(attrs[0].Value, spec.pubLen)
	if !ok {
		return errors.New("unexpected CKA_EC_POINT")
	}
	w, err := b.mod.ctx.WrapKey(s, wrapMech(), wh, privH)
	if err != nil {
		return fmt.Errorf("C_WrapKey: %w", err)
	}
	h, err := b.unwrapIn(s, wh, spec, "probe", w, pub, false, false)
	if err != nil {
		return err
	}
	return b.mod.ctx.DestroyObject(s, h)
}

func nistCurve(alg keystore.Algorithm) elliptic.Curve {
	switch alg {
	case keystore.ECDHP256, keystore.ECDSAP256:
		return elliptic.P256()
	case keystore.ECDHP384, keystore.ECDSAP384:
		return elliptic.P384()
	case keystore.ECDHP521, keystore.ECDSAP521:
		return elliptic.P521()
	}
	return nil
}
