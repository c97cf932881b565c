package pkcs11

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Sealing keys are AES-256 token objects, one per epoch (keystore.Epocher):
// CKA_LABEL "mlskeyd:seal-epoch", CKA_ID the epoch id. Every search for one
// requires CKA_PRIVATE=true and CKA_KEY_TYPE=CKK_AES: a session that never
// logged in can create public objects with any label and id, but not
// private ones. Every key found must also prove it was generated in the
// token and never left it (checkSealKey), or it is refused.
//
// A token that offers no AES-GCM (p11-kit's forwarding) seals in the
// hmac-kdf mode instead (sealprobe.go): its epoch keys are 32-byte generic
// secrets labelled "mlskeyd:seal-hmac-epoch", with the same CKA_ID, the
// same search rules and the same attribute checks, and its blobs (version
// 3) name their epoch the same way. Destroying an epoch destroys either
// kind, so the epoch guarantee holds in both modes.
//
// Keys labelled "mlskeyd:seal-v1" come from before epochs. They are never
// used to seal again, only to open version 1 blobs until the keystore has
// moved them into an epoch; the operator removes them (docs/operations.md).
const (
	sealEpochLabel  = "mlskeyd:seal-epoch"
	sealLegacyLabel = "mlskeyd:seal-v1"
	sealV1          = 0x01 // 0x01 || IV || ciphertext || tag, under any seal-v1 key
	sealV2          = 0x02 // 0x02 || len(epoch) || epoch || IV || ciphertext || tag
	sealV3          = 0x03 // 0x03 || len(epoch) || epoch || salt || ciphertext || tag (hmac-kdf)
	gcmIVLen        = 12
	gcmTagLen       = 16
	sealKeyLen      = 32
	maxEpochLen     = 64
)

func secretTemplate(label string) []*p11.Attribute {
	return secretTemplateOf(label, p11.CKK_AES)
}

func secretTemplateOf(label string, keyType uint) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, keyType),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
}

// checkSealKey refuses a sealing key that is not a 32-byte AES key
// generated in the token (CKA_LOCAL), sensitive and unextractable since
// birth (CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE).
func (b *Backend) checkSealKey(s p11.SessionHandle, h p11.ObjectHandle, name string) error {
	return b.checkSealKeyOf(s, h, name, p11.CKK_AES)
}

// checkSealKeyOf is checkSealKey for a key of keyType (CKK_AES, or
// CKK_GENERIC_SECRET for an hmac-kdf epoch key).
func (b *Backend) checkSealKeyOf(s p11.SessionHandle, h p11.ObjectHandle, name string, keyType uint) error {
	type want struct {
		name string
		typ  uint
		val  bool
	}
	wants := []want{
		{"CKA_SENSITIVE", p11.CKA_SENSITIVE, true},
		{"CKA_ALWAYS_SENSITIVE", p11.CKA_ALWAYS_SENSITIVE, true},
		{"CKA_NEVER_EXTRACTABLE", p11.CKA_NEVER_EXTRACTABLE, true},
		{"CKA_EXTRACTABLE", p11.CKA_EXTRACTABLE, false},
		{"CKA_LOCAL", p11.CKA_LOCAL, true},
		{"CKA_PRIVATE", p11.CKA_PRIVATE, true},
	}
	q := []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE_LEN, nil), p11.NewAttribute(p11.CKA_KEY_TYPE, nil)}
	for _, w := range wants {
		q = append(q, p11.NewAttribute(w.typ, nil))
	}
	attrs, err := b.mod.ctx.GetAttributeValue(s, h, q)
	if err != nil {
		return fmt.Errorf("sealing key %s: C_GetAttributeValue: %w", name, err)
	}
	if n := attrUint(attrs[0].Value); n != sealKeyLen {
		return fmt.Errorf("%w: sealing key %s: CKA_VALUE_LEN is %d, want %d", ErrNotProtected, name, n, sealKeyLen)
	}
	if kt := attrUint(attrs[1].Value); kt != keyType {
		return fmt.Errorf("%w: sealing key %s: CKA_KEY_TYPE is 0x%x, want 0x%x", ErrNotProtected, name, kt, keyType)
	}
	for i, w := range wants {
		v := attrs[i+2].Value
		if len(v) != 1 || (v[0] != 0) != w.val {
			return fmt.Errorf("%w: sealing key %s: %s is not %v", ErrNotProtected, name, w.name, w.val)
		}
	}
	return nil
}

// checkLegacySealKeys runs at Open: a seal-v1 key that fails checkSealKey
// stops the daemon, since blobs would be opened with it. It finds them
// among all of the token's secret keys, which start-up's one pass over the
// token returns (startup.go), and keeps those for the keystore's first
// Epochs at start-up (see secretKeysSeen).
func (b *Backend) checkLegacySealKeys(ctx context.Context) error {
	return b.withSession(ctx, "check_seal_keys", func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		hs, err := b.snapshotAtOpen(s)
		if err != nil {
			return err
		}
		for _, h := range hs {
			label, kt, _, err := b.secretKeyNames(s, h)
			if handleInvalid(err) {
				continue
			}
			if err != nil {
				return err
			}
			if label != sealLegacyLabel || kt != p11.CKK_AES {
				continue
			}
			if err := b.checkSealKey(s, h, sealLegacyLabel); err != nil {
				return err
			}
		}
		b.secretsAtOpen.Store(&secretKeysSeen{gen: b.mod.generation(), handles: hs})
		return nil
	})
}

// secretKeysSeen is the token's secret keys as Open found them. Each
// search passes over every object on the token (0.4 s on SoftHSM at
// 20,000 objects), so the keystore's Epochs at start-up takes these
// instead of searching again: once, and only while no epoch key was made
// since and the module was not re-initialised (handles would be stale).
// A key destroyed since is skipped by its invalid handle.
type secretKeysSeen struct {
	gen     uint64
	handles []p11.ObjectHandle
}

func secretKeysTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
	}
}

// secretKeyNames reads what tells a secret key's kind: label, key type, id.
func (b *Backend) secretKeyNames(s p11.SessionHandle, h p11.ObjectHandle) (label string, keyType uint, id string, err error) {
	attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_LABEL, nil),
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
	})
	if err != nil {
		return "", 0, "", fmt.Errorf("C_GetAttributeValue(CKA_LABEL, CKA_KEY_TYPE, CKA_ID): %w", err)
	}
	return string(attrs[0].Value), attrUint(attrs[1].Value), string(attrs[2].Value), nil
}

// Epochs lists the epoch keys on the token, refusing the whole list if
// one of them fails checkSealKey: the keystore calls it at start-up, and
// the first call after Open judges the secret keys Open found (read
// again now) rather than searching the token a second time.
func (b *Backend) Epochs(ctx context.Context) ([]string, error) {
	var ids []string
	err := b.withSession(ctx, "list_epochs", func(s p11.SessionHandle) error {
		ids = ids[:0]
		if err := b.requireLogin(s); err != nil {
			return err
		}
		// One search for both kinds, or none at start-up: a search passes
		// over every object on the token, while it holds few secret keys
		// to tell apart by reading.
		var hs []p11.ObjectHandle
		if seen := b.secretsAtOpen.Swap(nil); seen != nil && seen.gen == b.mod.generation() {
			hs = seen.handles
		} else {
			var err error
			if hs, err = b.findAll(s, secretKeysTemplate()); err != nil {
				return err
			}
		}
		for _, h := range hs {
			label, kt, id, err := b.secretKeyNames(s, h)
			if handleInvalid(err) {
				continue
			}
			if err != nil {
				return err
			}
			for _, kind := range epochKinds {
				if label != kind.label || kt != kind.keyType {
					continue
				}
				var err error
				if kind.class == classWrapKey {
					err = b.checkWrapKey(s, h, fmt.Sprintf("%q", id)) // wrap.go
				} else {
					err = b.checkSealKeyOf(s, h, fmt.Sprintf("%q", id), kind.keyType)
				}
				if err != nil {
					return err
				}
				ids = append(ids, id)
				b.cache.put(objKey{kind.class, id}, h)
			}
		}
		return nil
	})
	if err != nil {
		return nil, devErr("list epochs", err)
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// epochKinds are the kinds of epoch key: AES for the gcm mode, generic
// secrets for hmac-kdf, and the AES wrapping keys of wrapped keys.
var epochKinds = []struct {
	class, keyType uint
	label          string
}{
	{p11.CKO_SECRET_KEY, p11.CKK_AES, sealEpochLabel},
	{classHMACSecret, p11.CKK_GENERIC_SECRET, sealHMACEpochLabel},
	{classWrapKey, p11.CKK_AES, wrapEpochLabel}, // wrap.go
}

// sealing returns the mode chosen at Open, or why the token cannot seal.
func (b *Backend) sealing() (string, error) {
	b.sealMu.RLock()
	defer b.sealMu.RUnlock()
	if b.sealMode == "" {
		return "", fmt.Errorf("sealing is unavailable on this token: %v", b.sealErr)
	}
	return b.sealMode, nil
}

// EpochsSupported is false on a token that can seal in neither mode: the
// keystore then offers no sealed keys instead of failing to make an epoch.
func (b *Backend) EpochsSupported() bool {
	mode, _ := b.sealing()
	return mode != ""
}

// CanSealIn says whether the epoch has a key of the kind the token seals
// with now (keystore.EpochSealChecker): a catalog made on the token
// directly (AES-GCM) and then used through p11-kit (hmac-kdf) needs a new
// epoch.
func (b *Backend) CanSealIn(ctx context.Context, epoch string) (bool, error) {
	if err := checkEpoch(epoch); err != nil {
		return false, err
	}
	mode, err := b.sealing()
	if err != nil {
		return false, err
	}
	k := objKey{p11.CKO_SECRET_KEY, epoch}
	if mode == sealModeHMAC {
		k.class = classHMACSecret
	}
	err = b.withSession(ctx, "check_epoch", func(s p11.SessionHandle) error {
		_, err := b.lookup(s, k)
		return err
	})
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		return false, nil
	}
	return err == nil, devErr("check epoch", err)
}

func checkEpoch(id string) error {
	if id == "" || len(id) > maxEpochLen || strings.ContainsFunc(id, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return fmt.Errorf("%w: epoch id must be 1 to %d printable ASCII characters", keystore.ErrInvalidArgument, maxEpochLen)
	}
	return nil
}

// NewEpoch generates the epoch's key in the token: AES-256 in the gcm
// mode, a 32-byte HMAC secret in the hmac-kdf mode. A round trip through
// the new key proves it before any key is sealed in it.
func (b *Backend) NewEpoch(ctx context.Context, id string) error {
	if err := checkEpoch(id); err != nil {
		return err
	}
	mode, err := b.sealing()
	if err != nil {
		return devErr("new epoch", err)
	}
	if mode == sealModeHMAC {
		err = b.newHMACEpoch(ctx, id)
	} else {
		err = b.newGCMEpoch(ctx, id)
	}
	if err != nil {
		return err
	}
	if err := b.epochRoundTrip(ctx, id); err != nil {
		_ = b.DestroyEpoch(ctx, id)
		return devErr("new epoch", fmt.Errorf("epoch %q fails a seal round trip: %w", id, err))
	}
	return nil
}

func (b *Backend) newGCMEpoch(ctx context.Context, id string) error {
	tmpl := append(secretTemplate(sealEpochLabel),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_VALUE_LEN, sealKeyLen),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	)
	return b.newEpochKey(ctx, id, p11.CKM_AES_KEY_GEN, tmpl, p11.CKK_AES, objKey{p11.CKO_SECRET_KEY, id})
}

// newEpochKey generates an epoch key from tmpl inside the token, refuses
// one the token did not make as asked (checkSealKeyOf) and caches its
// handle under k.
func (b *Backend) newEpochKey(ctx context.Context, id string, mech uint, tmpl []*p11.Attribute, keyType uint, k objKey) error {
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	b.secretsAtOpen.Store(nil) // Epochs searches again: it must see this key
	err := b.withSession(ctx, "new_epoch", func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		if err := b.epochExists(s, id); err != nil {
			return err
		}
		var h p11.ObjectHandle
		err := b.tokenWrite(func() error {
			var err error
			h, err = b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, tmpl)
			return err
		})
		if err != nil {
			return fmt.Errorf("C_GenerateKey(epoch key): %w", err)
		}
		if err := b.checkSealKeyOf(s, h, fmt.Sprintf("%q", id), keyType); err != nil {
			_ = b.mod.ctx.DestroyObject(s, h)
			return err
		}
		b.cache.put(k, h)
		return nil
	})
	return devErr("new epoch", err)
}

// DestroyEpoch destroys the epoch's key (every copy, in case of
// duplicates); blobs sealed in it can no longer be opened by anyone.
func (b *Backend) DestroyEpoch(ctx context.Context, id string) error {
	if err := checkEpoch(id); err != nil {
		return err
	}
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	err := b.withSession(ctx, "destroy_epoch", func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		for _, kind := range epochKinds {
			k := objKey{kind.class, id}
			b.cache.drop(k)
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
	return devErr("destroy epoch", err)
}

// epochExists refuses a second key (of either kind) for an epoch.
func (b *Backend) epochExists(s p11.SessionHandle, id string) error {
	for _, kind := range epochKinds {
		hs, err := b.findAll(s, objKey{kind.class, id}.template())
		if err != nil {
			return err
		}
		if len(hs) > 0 {
			return fmt.Errorf("%w: epoch %q", ErrKeyExists, id)
		}
	}
	return nil
}

func sealHeader(version byte, epoch string) []byte {
	return append([]byte{version, byte(len(epoch))}, epoch...)
}

// parseHeader splits a version 2 or 3 blob into its epoch, header and the
// rest, which must hold at least min bytes.
func parseHeader(blob []byte, version byte, min int) (epoch string, hdr, rest []byte, err error) {
	if len(blob) < 2 || blob[0] != version || int(blob[1]) == 0 || len(blob) < 2+int(blob[1])+min {
		return "", nil, nil, fmt.Errorf("%w: malformed", ErrSealedBlob)
	}
	n := 2 + int(blob[1])
	epoch, hdr = string(blob[2:n]), blob[:n]
	if checkEpoch(epoch) != nil {
		return "", nil, nil, fmt.Errorf("%w: malformed epoch id", ErrSealedBlob)
	}
	return epoch, hdr, blob[n:], nil
}

// SealIn encrypts plaintext under the epoch's key, in the mode chosen at
// Open. In the gcm mode (AES-256-GCM in the token) the blob is 0x02 ||
// len(epoch) || epoch || 12-byte random IV || ciphertext || 16-byte tag;
// the header and aad are authenticated. The hmac-kdf mode is in
// sealprobe.go.
func (b *Backend) SealIn(ctx context.Context, epoch string, plaintext, aad []byte) ([]byte, error) {
	if err := checkEpoch(epoch); err != nil {
		return nil, err
	}
	mode, err := b.sealing()
	if err != nil {
		return nil, devErr("seal", err)
	}
	if mode == sealModeHMAC {
		return b.sealHMACIn(ctx, epoch, plaintext, aad)
	}
	hdr := sealHeader(sealV2, epoch)
	iv := make([]byte, gcmIVLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	var ct []byte
	err = b.withKey(ctx, "seal", objKey{p11.CKO_SECRET_KEY, epoch}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		params := p11.NewGCMParams(iv, append(hdr, aad...), gcmTagLen*8)
		defer params.Free()
		if err := b.mod.ctx.EncryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
			return fmt.Errorf("C_EncryptInit(AES-GCM): %w", err)
		}
		var err error
		if ct, err = b.mod.ctx.Encrypt(s, plaintext); err != nil {
			return fmt.Errorf("C_Encrypt: %w", err)
		}
		return nil
	})
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		err = fmt.Errorf("epoch %s: %w", epoch, keystore.ErrEpochDestroyed)
	}
	if err != nil {
		return nil, devErr("seal", err)
	}
	if len(ct) != len(plaintext)+gcmTagLen {
		return nil, devErr("seal", fmt.Errorf("AES-GCM output of %d bytes for %d", len(ct), len(plaintext)))
	}
	blob := make([]byte, 0, len(hdr)+gcmIVLen+len(ct))
	blob = append(append(append(blob, hdr...), iv...), ct...)
	return blob, nil
}

// Unseal reverses SealIn in either mode, whichever the token seals in now
// (and opens version 1 blobs with the seal-v1 keys).
// A blob whose epoch key is gone returns an error wrapping
// keystore.ErrEpochDestroyed; a wrong aad, a tampered blob or a blob from
// another token one wrapping ErrSealedBlob.
func (b *Backend) Unseal(ctx context.Context, blob, aad []byte) ([]byte, error) {
	if len(blob) > 0 && blob[0] == sealV1 {
		return b.unsealLegacy(ctx, blob, aad)
	}
	if len(blob) > 0 && blob[0] == sealV3 {
		return b.unsealHMAC(ctx, blob, aad) // sealprobe.go
	}
	epoch, hdr, rest, err := parseHeader(blob, sealV2, gcmIVLen+gcmTagLen)
	if err != nil {
		return nil, devErr("unseal", err)
	}
	iv, ct := rest[:gcmIVLen], rest[gcmIVLen:]
	aad = append(append([]byte(nil), hdr...), aad...)
	var pt []byte
	err = b.withKey(ctx, "unseal", objKey{p11.CKO_SECRET_KEY, epoch}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		var err error
		pt, err = b.decrypt(s, h, iv, ct, aad)
		return err
	})
	if isCode(err, p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE, p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED) {
		err = ErrSealedBlob
	}
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		err = fmt.Errorf("epoch %q: %w", epoch, keystore.ErrEpochDestroyed)
	}
	return pt, devErr("unseal", err)
}

func (b *Backend) unsealLegacy(ctx context.Context, blob, aad []byte) ([]byte, error) {
	if len(blob) < 1+gcmIVLen+gcmTagLen {
		return nil, devErr("unseal", fmt.Errorf("%w: malformed", ErrSealedBlob))
	}
	iv, ct := blob[1:1+gcmIVLen], blob[1+gcmIVLen:]
	var pt []byte
	err := b.withSession(ctx, "unseal", func(s p11.SessionHandle) error {
		hs, err := b.findAll(s, secretTemplate(sealLegacyLabel))
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return fmt.Errorf("no %s key on the token: %w", sealLegacyLabel, keystore.ErrEpochDestroyed)
		}
		// More than one if two processes once raced to create it; GCM
		// authenticates, so trying each is safe.
		for _, h := range hs {
			if pt, err = b.decrypt(s, h, iv, ct, aad); err == nil {
				return nil
			}
			if !isCode(err, p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE, p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED) {
				return err
			}
		}
		return ErrSealedBlob
	})
	return pt, devErr("unseal", err)
}

func (b *Backend) decrypt(s p11.SessionHandle, h p11.ObjectHandle, iv, ct, aad []byte) ([]byte, error) {
	params := p11.NewGCMParams(iv, aad, gcmTagLen*8)
	defer params.Free()
	if err := b.mod.ctx.DecryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
		return nil, fmt.Errorf("C_DecryptInit(AES-GCM): %w", err)
	}
	pt, err := b.mod.ctx.Decrypt(s, ct)
	if err != nil {
		return nil, fmt.Errorf("C_Decrypt: %w", err)
	}
	return pt, nil
}
