package pkcs11

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Wrapped keys (keystore.Wrapper): a key-agreement key pair is generated
// as session objects, its private half wrapped at once with
// CKM_AES_KEY_WRAP_PAD (RFC 5649) under the epoch's wrapping key, and both
// halves destroyed. The blob goes to the catalog; the token keeps only one
// wrapping key per epoch, however many keys exist. Each use unwraps the
// blob into a sensitive, non-extractable session object, checks that it is
// the record's key, derives, and destroys it.
//
// Wrapping keys are AES-256 token objects labelled "mlskeyd:wrap-epoch"
// with CKA_ID the epoch id, beside the epoch's sealing key: a key of their
// own (CKA_WRAP and CKA_UNWRAP only, no CKA_ENCRYPT/DECRYPT), found with
// the same search rules and attribute checks as the sealing keys, and
// destroyed with the epoch (DestroyEpoch).
//
// Blob: 0x01 || len(epoch) || epoch || AES-KWP output. AES-KWP has no
// associated data, so the blob is bound to its record by the public key:
// every unwrap derives with the curve's base point, which yields the
// public key (its x-coordinate on the NIST curves), and refuses a key
// that is not the record's. A blob of another installation does not
// unwrap: its wrapping key is not on this token.
const (
	wrapEpochLabel = "mlskeyd:wrap-epoch"
	wrapV1         = 0x01
	// classWrapKey is objKey's class for a wrapping key: a CKO_SECRET_KEY
	// of type CKK_AES under its own label, so that it is never taken for
	// the sealing key of the same epoch.
	classWrapKey = 1<<30 | p11.CKO_SECRET_KEY
)

// ErrWrappedBlob is wrapped when a wrapped blob is malformed, does not
// unwrap under its epoch's key, or holds another key than its record's.
var ErrWrappedBlob = errors.New("pkcs11: wrapped blob is invalid or belongs to another key")

// wrapState is what the wrap probe found at Open.
type wrapState struct {
	algs map[keystore.Algorithm]bool
	// notes says, per key-agreement algorithm, why it cannot be wrapped.
	notes map[keystore.Algorithm]string
	// trusted: the wrapping keys carry CKA_TRUSTED and the wrapped keys
	// CKA_WRAP_WITH_TRUSTED. trustNote says why not.
	trusted   bool
	trustNote string
}

// WrapSupport reports whether keys of alg can be wrapped on this token
// and, if not, why (keystore.Wrapper).
func (b *Backend) WrapSupport(alg keystore.Algorithm) (bool, string) {
	b.sealMu.RLock()
	defer b.sealMu.RUnlock()
	if b.wrap.algs[alg] {
		return true, ""
	}
	if n := b.wrap.notes[alg]; n != "" {
		return false, n
	}
	return false, "the token cannot compute " + string(alg)
}

// WrapTrust says whether the wrapping keys are CKA_TRUSTED, and if not why.
func (b *Backend) WrapTrust() (bool, string) {
	b.sealMu.RLock()
	defer b.sealMu.RUnlock()
	return b.wrap.trusted, b.wrap.trustNote
}

func wrapMech() []*p11.Mechanism {
	return []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}
}

// wrapKeyTemplate is the template of a wrapping key; token=false for the
// probe's throwaway key.
func wrapKeyTemplate(id string, token, trusted bool) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, token),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, wrapEpochLabel),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_VALUE_LEN, sealKeyLen),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_UNWRAP, true),
		p11.NewAttribute(p11.CKA_ENCRYPT, false),
		p11.NewAttribute(p11.CKA_DECRYPT, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	}
	if trusted {
		t = append(t, p11.NewAttribute(p11.CKA_TRUSTED, true))
	}
	return t
}

// checkWrapKey is checkSealKey for a wrapping key, which must also wrap
// and unwrap and do nothing else.
func (b *Backend) checkWrapKey(s p11.SessionHandle, h p11.ObjectHandle, name string) error {
	if err := b.checkSealKeyOf(s, h, name, p11.CKK_AES); err != nil {
		return err
	}
	attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_WRAP, nil), p11.NewAttribute(p11.CKA_UNWRAP, nil),
		p11.NewAttribute(p11.CKA_ENCRYPT, nil), p11.NewAttribute(p11.CKA_DECRYPT, nil),
	})
	if err != nil {
		return fmt.Errorf("wrapping key %s: C_GetAttributeValue: %w", name, err)
	}
	want := []bool{true, true, false, false}
	for i, a := range attrs {
		if len(a.Value) != 1 || (a.Value[0] != 0) != want[i] {
			return fmt.Errorf("%w: wrapping key %s: wrap, unwrap only expected", ErrNotProtected, name)
		}
	}
	return nil
}

// wrappableTemplates are keyPairTemplates for session objects whose
// private half may leave the token only wrapped (under a trusted key where
// the token allows it).
func (b *Backend) wrappableTemplates(spec *algSpec, id string, trusted bool) (pub, priv []*p11.Attribute) {
	pub, priv = keyPairTemplates(spec, id, false)
	for i, a := range priv {
		if a.Type == p11.CKA_EXTRACTABLE {
			priv[i] = p11.NewAttribute(p11.CKA_EXTRACTABLE, true)
		}
	}
	if trusted {
		priv = append(priv, p11.NewAttribute(p11.CKA_WRAP_WITH_TRUSTED, true))
	}
	return pub, priv
}

// unwrapTemplate is the template of an unwrapped private key: a session
// object named after the record's id, sensitive, and extractable only
// when it is to be wrapped again (RewrapIn).
func unwrapTemplate(spec *algSpec, id string, extractable, trusted bool) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, spec.keyType),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, extractable),
		p11.NewAttribute(p11.CKA_DERIVE, true),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_LABEL, labelPrefix+id),
	}
	if extractable && trusted {
		t = append(t, p11.NewAttribute(p11.CKA_WRAP_WITH_TRUSTED, true))
	}
	return t
}

// basePoint is the curve's generator in the MLS public-key encoding: a
// derivation with it yields the public key (x-coordinate on NIST curves).
func basePoint(alg keystore.Algorithm) []byte {
	switch alg {
	case keystore.X25519:
		p := make([]byte, 32)
		p[0] = 9
		return p
	case keystore.X448:
		p := make([]byte, 56)
		p[0] = 5
		return p
	}
	if c := nistCurve(alg); c != nil {
		p := c.Params()
		n := (p.BitSize + 7) / 8
		out := make([]byte, 1+2*n)
		out[0] = 4
		p.Gx.FillBytes(out[1 : 1+n])
		p.Gy.FillBytes(out[1+n:])
		return out
	}
	return nil
}

// pubCoord is what a derivation with the base point must return for pub.
func pubCoord(spec *algSpec, pub []byte) []byte {
	if spec.nist {
		if len(pub) != spec.pubLen {
			return nil
		}
		return pub[1 : 1+spec.outLen]
	}
	return pub
}

// checkUnwrapped proves that h is the private key of pub.
func (b *Backend) checkUnwrapped(s p11.SessionHandle, spec *algSpec, h p11.ObjectHandle, pub []byte) error {
	z, err := b.deriveIn(s, spec, h, basePoint(spec.alg))
	if err != nil {
		return err
	}
	defer clear(z)
	want := pubCoord(spec, pub)
	if len(want) == 0 || subtle.ConstantTimeCompare(z, want) != 1 {
		return fmt.Errorf("%w: the unwrapped key is not the record's key", ErrWrappedBlob)
	}
	return nil
}

func wrapHeader(epoch string) []byte {
	return append([]byte{wrapV1, byte(len(epoch))}, epoch...)
}

func (b *Backend) wrapSpec(alg keystore.Algorithm) (*algSpec, bool, error) {
	ok, why := b.WrapSupport(alg)
	if !ok {
		return nil, false, fmt.Errorf("%w: %s cannot be wrapped on this token: %s", keystore.ErrUnsupportedAlgorithm, alg, why)
	}
	spec, err := b.spec(alg)
	if err != nil {
		return nil, false, err
	}
	trusted, _ := b.WrapTrust()
	return spec, trusted, nil
}

// wrapKey returns the handle of the epoch's wrapping key; with create it
// makes the key if the epoch has a sealing key but no wrapping key yet (an
// epoch from before wrapping). An epoch without either is destroyed.
func (b *Backend) wrapKey(ctx context.Context, epoch string, create bool) error {
	k := objKey{classWrapKey, epoch}
	err := b.withSession(ctx, "wrap_key", func(s p11.SessionHandle) error {
		_, err := b.lookupWrapKey(s, k)
		return err
	})
	if !create || !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		return err
	}
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	trusted, _ := b.WrapTrust()
	return b.withSession(ctx, "new_epoch", func(s p11.SessionHandle) error {
		if _, err := b.lookupWrapKey(s, k); !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
			return err
		}
		alive := false
		for _, kind := range epochKinds {
			if kind.class == classWrapKey {
				continue
			}
			hs, err := b.findAll(s, objKey{kind.class, epoch}.template())
			if err != nil {
				return err
			}
			alive = alive || len(hs) > 0
		}
		if !alive {
			return fmt.Errorf("epoch %q: %w", epoch, keystore.ErrEpochDestroyed)
		}
		var h p11.ObjectHandle
		err := b.tokenWrite(func() error {
			var err error
			h, err = b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, wrapKeyTemplate(epoch, true, trusted))
			return err
		})
		if err != nil {
			return fmt.Errorf("C_GenerateKey(wrapping key): %w", err)
		}
		if err := b.checkWrapKey(s, h, fmt.Sprintf("%q", epoch)); err != nil {
			_ = b.mod.ctx.DestroyObject(s, h)
			return err
		}
		b.cache.put(k, h)
		b.secretsAtOpen.Store(nil) // Epochs searches again: it must see this key
		return nil
	})
}

// lookupWrapKey finds a wrapping key and, when it was not cached,
// checks its attributes first.
func (b *Backend) lookupWrapKey(s p11.SessionHandle, k objKey) (p11.ObjectHandle, error) {
	if h, ok := b.cache.get(k); ok {
		return h, nil
	}
	h, err := b.lookup(s, k)
	if err != nil {
		return 0, err
	}
	if err := b.checkWrapKey(s, h, fmt.Sprintf("%q", k.id)); err != nil {
		b.cache.drop(k)
		return 0, err
	}
	return h, nil
}

// withWrapKey is withKey for the epoch's wrapping key; a missing one
// means the epoch was destroyed.
func (b *Backend) withWrapKey(ctx context.Context, op, epoch string, fn func(s p11.SessionHandle, h p11.ObjectHandle) error) error {
	k := objKey{classWrapKey, epoch}
	err := b.withSession(ctx, op, func(s p11.SessionHandle) error {
		h, err := b.lookupWrapKey(s, k)
		if err != nil {
			return err
		}
		err = fn(s, h)
		if !handleInvalid(err) {
			return err
		}
		b.cache.drop(k)
		if h, err = b.lookupWrapKey(s, k); err != nil {
			return err
		}
		return fn(s, h)
	})
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		err = fmt.Errorf("epoch %q: %w", epoch, keystore.ErrEpochDestroyed)
	}
	return err
}

// GenerateWrapped makes a key pair of alg as session objects, wraps the
// private half under the epoch's wrapping key and destroys both halves.
// Nothing stays on the token (keystore.Wrapper).
func (b *Backend) GenerateWrapped(ctx context.Context, epoch, id string, alg keystore.Algorithm) (blob, pub []byte, err error) {
	if err := checkEpoch(epoch); err != nil {
		return nil, nil, err
	}
	if err := checkID(id); err != nil {
		return nil, nil, err
	}
	spec, trusted, err := b.wrapSpec(alg)
	if err != nil {
		return nil, nil, err
	}
	// Only an epoch's first wrapped key (or the first after a re-login)
	// needs the search, and the check, of wrapKey.
	if _, ok := b.cache.get(objKey{classWrapKey, epoch}); !ok {
		if err := b.wrapKey(ctx, epoch, true); err != nil {
			return nil, nil, devErr("generate wrapped "+string(alg), err)
		}
	}
	err = b.withWrapKey(ctx, "generate_wrapped", epoch, func(s p11.SessionHandle, wh p11.ObjectHandle) (err error) {
		pt, kt := b.wrappableTemplates(spec, id, trusted)
		var point, w []byte
		var pubH, privH p11.ObjectHandle
		r, direct := b.genWrapDirect(s, spec.genMech, wh, pt, kt, false)
		switch {
		case !direct:
		case r.destroyed:
			// All done in one call, the objects are gone again; a failed
			// destruction poisons the session as destroySession does.
			if r.err != nil {
				return r.err
			}
			if r.destroyErr != nil {
				return &poisoned{fmt.Errorf("C_DestroyObject(session key): %w", r.destroyErr)}
			}
			point, w = r.point, r.wrapped
		case !r.generated:
			return r.err
		default:
			// A buffer was too small: go on the ordinary way.
			pubH, privH, point = r.pubH, r.privH, r.point
			defer b.destroySession(s, &err, privH, pubH)
		}
		if !direct {
			pubH, privH, err = b.mod.ctx.GenerateKeyPair(s, []*p11.Mechanism{p11.NewMechanism(spec.genMech, nil)}, pt, kt)
			if err != nil {
				return fmt.Errorf("C_GenerateKeyPair(session): %w", err)
			}
			defer b.destroySession(s, &err, privH, pubH)
		}
		if point == nil {
			attrs, err := b.mod.ctx.GetAttributeValue(s, pubH, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
			}
			point = attrs[0].Value
		}
		p, ok := decodeECPoint(point, spec.pubLen)
		if !ok || (spec.nist && p[0] != 4) {
			return fmt.Errorf("unexpected CKA_EC_POINT of %d bytes", len(point))
		}
		if w == nil {
			if w, err = b.mod.ctx.WrapKey(s, wrapMech(), wh, privH); err != nil {
				return fmt.Errorf("C_WrapKey(AES-KWP): %w", err)
			}
		}
		pub, blob = p, append(wrapHeader(epoch), w...)
		return nil
	})
	if err != nil {
		return nil, nil, devErr("generate wrapped "+string(alg), err)
	}
	return blob, pub, nil
}

// destroySession destroys session objects at the end of an operation; a
// failure poisons the session, whose closing destroys them.
func (b *Backend) destroySession(s p11.SessionHandle, errp *error, hs ...p11.ObjectHandle) {
	for _, h := range hs {
		if derr := b.mod.ctx.DestroyObject(s, h); derr != nil && *errp == nil {
			*errp = &poisoned{fmt.Errorf("C_DestroyObject(session key): %w", derr)}
		}
	}
}

// unwrapIn unwraps blob's key into a session object on s and checks that
// it is pub's private key. The caller destroys it.
func (b *Backend) unwrapIn(s p11.SessionHandle, wh p11.ObjectHandle, spec *algSpec, id string, wrapped, pub []byte, extractable, trusted bool) (p11.ObjectHandle, error) {
	h, err := b.mod.ctx.UnwrapKey(s, wrapMech(), wh, wrapped, unwrapTemplate(spec, id, extractable, trusted))
	if isCode(err, p11.CKR_WRAPPED_KEY_INVALID, p11.CKR_WRAPPED_KEY_LEN_RANGE, p11.CKR_ENCRYPTED_DATA_INVALID,
		p11.CKR_ENCRYPTED_DATA_LEN_RANGE, p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED, p11.CKR_TEMPLATE_INCONSISTENT) {
		return 0, fmt.Errorf("%w: C_UnwrapKey: %w", ErrWrappedBlob, err)
	}
	if err != nil {
		return 0, fmt.Errorf("C_UnwrapKey: %w", err)
	}
	if err := b.checkUnwrapped(s, spec, h, pub); err != nil {
		b.destroySession(s, &err, h)
		return 0, err
	}
	return h, nil
}

func parseWrapped(blob []byte) (epoch string, wrapped []byte, err error) {
	epoch, _, wrapped, err = parseHeader(blob, wrapV1, 16)
	if err != nil {
		return "", nil, fmt.Errorf("%w: malformed", ErrWrappedBlob)
	}
	return epoch, wrapped, nil
}

// ECDHWrapped unwraps blob into a sensitive, non-extractable session
// object named id, checks it against pub, derives with peer and destroys
// it (keystore.Wrapper).
func (b *Backend) ECDHWrapped(ctx context.Context, blob []byte, id string, alg keystore.Algorithm, pub, peer []byte) ([]byte, error) {
	spec, err := b.agreementSpec(alg, peer)
	if err != nil {
		return nil, err
	}
	epoch, wrapped, err := parseWrapped(blob)
	if err != nil {
		return nil, devErr("unwrap", err)
	}
	var z []byte
	err = b.withWrapKey(ctx, "ecdh_wrapped", epoch, func(s p11.SessionHandle, wh p11.ObjectHandle) (err error) {
		h, err := b.unwrapIn(s, wh, spec, id, wrapped, pub, false, false)
		if err != nil {
			return err
		}
		defer b.destroySession(s, &err, h)
		z, err = b.deriveIn(s, spec, h, peer)
		return err
	})
	if err != nil {
		return nil, devErr("ecdh "+string(alg)+" (wrapped)", err)
	}
	return z, nil
}

// RewrapIn moves a wrapped key to another epoch: it unwraps it (as an
// extractable session object, which exists only for this call), checks
// it against pub and wraps it under the epoch's key (keystore.Wrapper).
func (b *Backend) RewrapIn(ctx context.Context, epoch string, blob []byte, id string, alg keystore.Algorithm, pub []byte) ([]byte, error) {
	if err := checkEpoch(epoch); err != nil {
		return nil, err
	}
	spec, trusted, err := b.wrapSpec(alg)
	if err != nil {
		return nil, err
	}
	from, wrapped, err := parseWrapped(blob)
	if err != nil {
		return nil, devErr("rewrap", err)
	}
	if err := b.wrapKey(ctx, epoch, true); err != nil {
		return nil, devErr("rewrap", err)
	}
	var out []byte
	err = b.withWrapKey(ctx, "rewrap", from, func(s p11.SessionHandle, oh p11.ObjectHandle) (err error) {
		nh, err := b.lookupWrapKey(s, objKey{classWrapKey, epoch})
		if err != nil {
			return err
		}
		h, err := b.unwrapIn(s, oh, spec, id, wrapped, pub, true, trusted)
		if err != nil {
			return err
		}
		defer b.destroySession(s, &err, h)
		w, err := b.mod.ctx.WrapKey(s, wrapMech(), nh, h)
		if err != nil {
			return fmt.Errorf("C_WrapKey(AES-KWP): %w", err)
		}
		out = append(wrapHeader(epoch), w...)
		return nil
	})
	if err != nil {
		return nil, devErr("rewrap", err)
	}
	return out, nil
}
