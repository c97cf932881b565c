package pkcs11

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

const (
	labelPrefix = "mlskeyd:"
	refVersion  = 0x01
	maxIDLen    = 255
	// maxCache bounds the handle cache (about 100 bytes an entry); it is
	// emptied when full.
	maxCache = 1 << 18
)

// EncodeRef returns the device reference for a catalog id: a version byte
// (0x01) followed by the id bytes. The reference names the objects by
// CKA_ID; object handles are not stable across logins or processes.
func EncodeRef(id string) []byte {
	return append([]byte{refVersion}, id...)
}

// DecodeRef is the inverse of EncodeRef.
func DecodeRef(ref []byte) (string, error) {
	if len(ref) < 2 || ref[0] != refVersion || len(ref)-1 > maxIDLen {
		return "", fmt.Errorf("%w: malformed pkcs11 key reference", keystore.ErrInvalidArgument)
	}
	return string(ref[1:]), nil
}

func checkID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w: key id must be 1 to %d bytes", keystore.ErrInvalidArgument, maxIDLen)
	}
	return nil
}

// objKey names a token object: its class and CKA_ID.
type objKey struct {
	class uint
	id    string
}

func (k objKey) label() string {
	switch k.class {
	case p11.CKO_SECRET_KEY:
		return sealEpochLabel
	case classHMACSecret:
		return sealHMACEpochLabel
	case classWrapKey:
		return wrapEpochLabel
	}
	return labelPrefix + k.id
}

// template matches the object exactly: class, CKA_ID and CKA_LABEL (the
// label keeps keys of other applications that reuse an id out of reach).
// Private and secret keys must also be CKA_PRIVATE: only a logged-in
// session can make such an object, so nobody without the PIN can plant a
// key the daemon would then use. Secret keys must be AES, or generic
// secrets for the hmac-kdf epoch keys.
func (k objKey) template() []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, k.p11Class()),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_ID, []byte(k.id)),
		p11.NewAttribute(p11.CKA_LABEL, k.label()),
	}
	switch k.class {
	case p11.CKO_PRIVATE_KEY:
		t = append(t, p11.NewAttribute(p11.CKA_PRIVATE, true))
	case p11.CKO_SECRET_KEY, classWrapKey:
		t = append(t, p11.NewAttribute(p11.CKA_PRIVATE, true), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES))
	case classHMACSecret:
		t = append(t, p11.NewAttribute(p11.CKA_PRIVATE, true), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET))
	}
	return t
}

// classHMACSecret is objKey's class for an hmac-kdf epoch key: a
// CKO_SECRET_KEY of type CKK_GENERIC_SECRET under its own label, so that
// the two kinds of epoch key, which share their CKA_ID (the epoch id),
// are never taken for one another.
const classHMACSecret = 1<<31 | p11.CKO_SECRET_KEY

func (k objKey) p11Class() uint {
	if k.class == classHMACSecret || k.class == classWrapKey {
		return p11.CKO_SECRET_KEY
	}
	return k.class
}

// handleCache remembers object handles within this module instance. Entries
// are dropped on CKR_OBJECT_HANDLE_INVALID, on Destroy and on re-login.
type handleCache struct {
	mu sync.Mutex
	m  map[objKey]p11.ObjectHandle
}

func (c *handleCache) get(k objKey) (p11.ObjectHandle, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.m[k]
	return h, ok
}

func (c *handleCache) put(k objKey, h p11.ObjectHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCache {
		c.m = make(map[objKey]p11.ObjectHandle)
	}
	c.m[k] = h
}

func (c *handleCache) drop(k objKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

func (c *handleCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
}

// findAll runs a complete C_FindObjects search.
func (b *Backend) findAll(s p11.SessionHandle, tmpl []*p11.Attribute) ([]p11.ObjectHandle, error) {
	b.searches.Add(1)
	b.findMu.RLock()
	defer b.findMu.RUnlock()
	if err := b.mod.ctx.FindObjectsInit(s, tmpl); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var all []p11.ObjectHandle
	var err error
	for {
		var hs []p11.ObjectHandle
		hs, _, err = b.mod.ctx.FindObjects(s, 64)
		if err != nil {
			err = fmt.Errorf("C_FindObjects: %w", err)
			break
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if ferr := b.mod.ctx.FindObjectsFinal(s); ferr != nil && err == nil {
		err = fmt.Errorf("C_FindObjectsFinal: %w", ferr)
	}
	return all, err
}

// lookup returns the handle of object k, from the cache or by searching.
// types, if given, are the CKA_KEY_TYPE values the object may have: the
// search requires one of them.
func (b *Backend) lookup(s p11.SessionHandle, k objKey, types ...uint) (p11.ObjectHandle, error) {
	if h, ok := b.cache.get(k); ok {
		return h, nil
	}
	var hs []p11.ObjectHandle
	var err error
	if len(types) == 0 {
		hs, err = b.findAll(s, k.template())
	}
	for _, t := range types {
		if hs, err = b.findAll(s, append(k.template(), p11.NewAttribute(p11.CKA_KEY_TYPE, t))); err != nil || len(hs) > 0 {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	if len(hs) == 0 {
		if err := b.requireLogin(s); err != nil {
			return 0, err
		}
		return 0, notFound(k.id)
	}
	b.cache.put(k, hs[0])
	return hs[0], nil
}

// withKey runs fn on a pooled session with the handle of object k. A stale
// cached handle is dropped and fn runs again with a fresh one.
func (b *Backend) withKey(ctx context.Context, op string, k objKey, fn func(s p11.SessionHandle, h p11.ObjectHandle) error, types ...uint) error {
	return b.withSession(ctx, op, func(s p11.SessionHandle) error {
		h, err := b.lookup(s, k, types...)
		if err != nil {
			return err
		}
		err = fn(s, h)
		if !handleInvalid(err) {
			return err
		}
		b.cache.drop(k)
		if h, err = b.lookup(s, k, types...); err != nil {
			return err
		}
		return fn(s, h)
	})
}

// List returns every key pair this daemon created on the token: private
// keys labelled "mlskeyd:"+CKA_ID, and public keys without a private half
// (so that the caller can destroy them). A private key's listing also reads
// what Check judges, in the same C_GetAttributeValue as its label and id,
// and offers that judgement as DeviceKey.Check: start-up then checks every
// key without reading each one again. SoftHSM's file store refreshes an
// object from its file on every call that touches it, and every object on
// each search: with many keys, start-up's cost is the number of searches
// and of calls per object. The first List after Open takes what Open's one
// pass over the token read (startup.go) and searches nothing.
func (b *Backend) List(ctx context.Context) ([]keystore.DeviceKey, error) {
	ids := map[string][]*p11.Attribute{}
	r := newAttrReader(b.mod.path, b.forwarded)
	defer r.free()
	err := b.withSession(ctx, "list", func(s p11.SessionHandle) error {
		clear(ids)
		if err := b.requireLogin(s); err != nil {
			return err
		}
		keys, ok := b.startupKeys()
		if !ok {
			var err error
			if keys, err = b.searchKeys(s, r); err != nil {
				return err
			}
		}
		for _, k := range keys {
			if _, seen := ids[k.id]; !seen || k.judged != nil {
				ids[k.id] = k.judged
			}
			// Keys are used after listing them: with the handle
			// cached, that searches nothing.
			b.cache.put(objKey{k.class, k.id}, k.h)
		}
		return nil
	})
	if err != nil {
		return nil, devErr("list", err)
	}
	out := make([]keystore.DeviceKey, 0, len(ids))
	for id, judged := range ids {
		dk := keystore.DeviceKey{ID: id, Ref: EncodeRef(id)}
		if judged != nil {
			dk.Check = func(alg keystore.Algorithm) error {
				spec, err := b.spec(alg)
				if err != nil {
					return err // as Check says it
				}
				return devErr("check", judge(spec, judged))
			}
		}
		out = append(out, dk)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// searchKeys finds and reads our key pairs' halves, private keys first.
func (b *Backend) searchKeys(s p11.SessionHandle, r *attrReader) ([]tokenKey, error) {
	var keys []tokenKey
	for _, class := range []uint{p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY} {
		hs, err := b.findAll(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, class),
			p11.NewAttribute(p11.CKA_TOKEN, true),
		})
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			k, keep, err := b.readKey(s, r, class, h)
			if handleInvalid(err) {
				continue // destroyed meanwhile
			}
			if err != nil {
				return nil, err
			}
			if keep {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// Destroy removes both halves of the key pair. A key that is already gone
// is not an error. A half whose handle is cached, and still names this
// object, is destroyed without a token search (a search is linear in the
// token's objects, and consuming an init key destroys one on the request
// path); otherwise every matching object is searched for and destroyed.
func (b *Backend) Destroy(ctx context.Context, ref []byte) error {
	id, err := DecodeRef(ref)
	if err != nil {
		return err
	}
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	b.dropStartupKeys()
	err = b.withSession(ctx, "destroy", func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		for _, class := range []uint{p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY} {
			k := objKey{class: class, id: id}
			if h, ok := b.cache.get(k); ok {
				b.cache.drop(k)
				if b.names(s, h, k) {
					err := b.tokenWrite(func() error { return b.mod.ctx.DestroyObject(s, h) })
					if err == nil || handleInvalid(err) {
						continue
					}
					return fmt.Errorf("C_DestroyObject: %w", err)
				}
			}
			hs, err := b.findAll(s, k.template())
			if err != nil {
				return err
			}
			for _, h := range hs {
				if err := b.tokenWrite(func() error { return b.mod.ctx.DestroyObject(s, h) }); err != nil && !handleInvalid(err) {
					return fmt.Errorf("C_DestroyObject: %w", err)
				}
			}
		}
		return nil
	})
	if errors.Is(err, keystore.ErrDeviceUnavailable) && !isRecovering(ctx) {
		b.deferDestroy(id) // recover.go: done once the token is back
	}
	return devErr("destroy", err)
}

// names reports whether handle h is object k: its class, CKA_ID and
// CKA_LABEL match. A cached handle is checked before it is destroyed, so a
// handle the token has since given to another object is never destroyed.
func (b *Backend) names(s p11.SessionHandle, h p11.ObjectHandle, k objKey) bool {
	attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_LABEL, nil),
	})
	return err == nil && attrUint(attrs[0].Value) == k.p11Class() &&
		string(attrs[1].Value) == k.id && string(attrs[2].Value) == k.label()
}

// Check confirms that the private key exists, matches alg, and was
// generated on the device and never extractable.
func (b *Backend) Check(ctx context.Context, ref []byte, alg keystore.Algorithm) error {
	id, err := DecodeRef(ref)
	if err != nil {
		return err
	}
	spec, err := b.spec(alg)
	if err != nil {
		return err
	}
	var problem error
	err = b.withKey(ctx, "check", objKey{p11.CKO_PRIVATE_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		attrs, err := b.mod.ctx.GetAttributeValue(s, h, checkQuery())
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		problem = judge(spec, attrs)
		return nil
	}, spec.keyTypes()...)
	if err == nil {
		err = problem
	}
	return devErr("check", err)
}

// protection lists the attributes of a private key that say it was made
// on the device and can never leave it, with the values Check requires.
var protection = []struct {
	name string
	typ  uint
	val  bool
}{
	{"CKA_ALWAYS_SENSITIVE", p11.CKA_ALWAYS_SENSITIVE, true},
	{"CKA_NEVER_EXTRACTABLE", p11.CKA_NEVER_EXTRACTABLE, true},
	{"CKA_SENSITIVE", p11.CKA_SENSITIVE, true},
	{"CKA_EXTRACTABLE", p11.CKA_EXTRACTABLE, false},
	{"CKA_LOCAL", p11.CKA_LOCAL, true},
	{"CKA_PRIVATE", p11.CKA_PRIVATE, true},
	{"CKA_TOKEN", p11.CKA_TOKEN, true},
}

// checkQuery is what judge reads, in its order: the key type, the curve,
// the protection attributes, CKA_SIGN and CKA_DERIVE.
func checkQuery() []*p11.Attribute {
	q := []*p11.Attribute{p11.NewAttribute(p11.CKA_KEY_TYPE, nil), p11.NewAttribute(p11.CKA_EC_PARAMS, nil)}
	for _, w := range protection {
		q = append(q, p11.NewAttribute(w.typ, nil))
	}
	return append(q, p11.NewAttribute(p11.CKA_SIGN, nil), p11.NewAttribute(p11.CKA_DERIVE, nil))
}

// judge says why a private key whose attributes attrs (read with
// checkQuery) are is not a protected key for spec, or nil if it is.
func judge(spec *algSpec, attrs []*p11.Attribute) error {
	kt := attrUint(attrs[0].Value)
	okType := kt == spec.keyType
	if spec.alg == keystore.X25519 || spec.alg == keystore.X448 {
		// a key made under either route stays usable
		okType = kt == ckkECMontgomery || kt == ckkECEdwards
	}
	if !okType {
		return fmt.Errorf("%w: CKA_KEY_TYPE is 0x%x, not a %s key", keystore.ErrWrongRole, kt, spec.alg)
	}
	if !ecParamsMatch(attrs[1].Value, spec.oid) {
		return fmt.Errorf("%w: CKA_EC_PARAMS does not name the %s curve", keystore.ErrWrongRole, spec.alg)
	}
	for i, w := range protection {
		if !boolIs(attrs[i+2].Value, w.val) {
			return fmt.Errorf("%w: %s is not %v", ErrNotProtected, w.name, w.val)
		}
	}
	use, name := attrs[len(attrs)-1], "CKA_DERIVE"
	if spec.sign {
		use, name = attrs[len(attrs)-2], "CKA_SIGN"
	}
	if !boolIs(use.Value, true) {
		return fmt.Errorf("%w: %s is not true", ErrNotProtected, name)
	}
	return nil
}

// boolIs reports whether v is a CK_BBOOL of value want.
func boolIs(v []byte, want bool) bool {
	return len(v) == 1 && (v[0] != 0) == want
}

// attrUint decodes a CK_ULONG attribute (native byte order).
func attrUint(v []byte) uint {
	switch len(v) {
	case 8:
		return uint(binary.NativeEndian.Uint64(v))
	case 4:
		return uint(binary.NativeEndian.Uint32(v))
	}
	return ^uint(0)
}

// tokenWrite runs one call that creates or destroys a token object, with
// no search running (see findMu).
func (b *Backend) tokenWrite(f func() error) error {
	b.findMu.Lock()
	defer b.findMu.Unlock()
	return f()
}
