package pkcs11

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Sealing is probed, never assumed. Open seals and unseals a throwaway
// secret before it reports the Backend as a working Sealer; SealError says
// why not otherwise, and the keystore then reports the algorithms the token
// cannot compute as unavailable instead of sealed.
//
// Two modes, chosen by what the token (or a forwarder in front of it)
// actually does:
//
//   - gcm: CKM_AES_GCM under the AES-256 key "mlskeyd:seal-v1" (seal.go).
//   - hmac-kdf: for tokens that offer no AES-GCM. p11-kit 0.24's RPC
//     forwards no mechanism with a parameter it does not know, so behind
//     p11-kit-client.so AES-GCM, AES-CBC-PAD and AES-KEY-WRAP-PAD all fail
//     with CKR_MECHANISM_INVALID, while CKM_SHA256_HMAC (no parameter)
//     works. A token generic secret "mlskeyd:seal-hmac-v1" (sensitive,
//     never extractable, sign only) derives a one-blob key:
//     K = HMAC-SHA256_token("mlskeyd seal-hmac v1" || salt) with a random
//     32-byte salt, and the daemon encrypts with AES-256-GCM under K (zero
//     nonce: K is used once), the caller's aad authenticated. Blob =
//     0x02 || salt || ciphertext || tag. Without the token key nobody can
//     compute K, so a copied catalog is as useless as with the gcm mode; K
//     itself is in daemon memory for the one operation, as the unsealed
//     private key is anyway, and wiped after.

const (
	sealModeGCM  = "gcm"
	sealModeHMAC = "hmac-kdf"

	sealHMACLabel   = "mlskeyd:seal-hmac-v1"
	sealHMACVersion = 0x02
	sealHMACSalt    = 32
	// hmacIDPrefix marks the CKA_IDs of HMAC sealing keys, so that objKey
	// finds them under their own label.
	hmacIDPrefix = "hmac-"
)

var sealHMACContext = []byte("mlskeyd seal-hmac v1")

// SealMode reports how the Backend seals ("gcm" or "hmac-kdf"), or "" when
// it cannot.
func (b *Backend) SealMode() string {
	b.sealMu.RLock()
	defer b.sealMu.RUnlock()
	return b.sealMode
}

// SealError says why sealing failed its probe at Open (nil when it works).
// keystore.SealChecker.
func (b *Backend) SealError() error {
	b.sealMu.RLock()
	defer b.sealMu.RUnlock()
	return b.sealErr
}

// setUpSealing picks the sealing mode by trying: first AES-GCM with a
// throwaway session key (so that no token key is made for a mechanism that
// does not work), then the token key and a seal/unseal round trip; then
// the same for the HMAC fallback. A failure of both is recorded in
// SealError, not returned: the token can still serve what it computes.
// Only a lost session or device, or a closed Backend, is returned.
func (b *Backend) setUpSealing(ctx context.Context) error {
	mechList, err := b.mod.ctx.GetMechanismList(b.slot)
	if err != nil {
		return fmt.Errorf("C_GetMechanismList: %w", err)
	}
	has := map[uint]bool{}
	for _, m := range mechList {
		has[m.Mechanism] = true
	}
	var why []string
	var fatal error
	try := func(mode string, mechs []uint, probe func() error, ensure func() error) bool {
		for _, m := range mechs {
			if !has[m] {
				why = append(why, fmt.Sprintf("%s: %s not offered", mode, mechName(m)))
				return false
			}
		}
		b.sealMu.Lock()
		b.sealMode = mode
		b.sealMu.Unlock()
		err := probe()
		if sessionLost(err) || deviceGone(err) || errors.Is(err, ErrClosed) {
			fatal = err
			return false
		}
		if err == nil {
			err = ensure()
		}
		if err == nil {
			err = b.sealRoundTrip(ctx)
		}
		if err != nil {
			b.sealMu.Lock()
			b.sealMode = ""
			b.sealMu.Unlock()
			why = append(why, fmt.Sprintf("%s: %v", mode, err))
			return false
		}
		return true
	}
	ok := try(sealModeGCM, []uint{p11.CKM_AES_KEY_GEN, p11.CKM_AES_GCM},
		func() error { return b.withSession(ctx, b.probeGCM) },
		func() error { return b.ensureSealKey(ctx) })
	if !ok {
		ok = try(sealModeHMAC, []uint{p11.CKM_GENERIC_SECRET_KEY_GEN, p11.CKM_SHA256_HMAC},
			func() error { return b.withSession(ctx, b.probeHMAC) },
			func() error { return b.ensureHMACSealKey(ctx) })
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if fatal != nil {
		return fatal
	}
	b.sealMu.Lock()
	defer b.sealMu.Unlock()
	if ok {
		b.sealErr = nil
		return nil
	}
	b.sealErr = errors.New(strings.Join(why, "; "))
	return nil
}

func mechName(m uint) string {
	switch m {
	case p11.CKM_AES_KEY_GEN:
		return "CKM_AES_KEY_GEN"
	case p11.CKM_AES_GCM:
		return "CKM_AES_GCM"
	case p11.CKM_GENERIC_SECRET_KEY_GEN:
		return "CKM_GENERIC_SECRET_KEY_GEN"
	case p11.CKM_SHA256_HMAC:
		return "CKM_SHA256_HMAC"
	case p11.CKM_ECDSA:
		return "CKM_ECDSA"
	case p11.CKM_ECDH1_DERIVE:
		return "CKM_ECDH1_DERIVE"
	case p11.CKM_EC_KEY_PAIR_GEN:
		return "CKM_EC_KEY_PAIR_GEN"
	case ckmEdDSA:
		return "CKM_EDDSA"
	case ckmECEdwardsKeyPairGen:
		return "CKM_EC_EDWARDS_KEY_PAIR_GEN"
	case ckmECMontgomeryKeyPairGen:
		return "CKM_EC_MONTGOMERY_KEY_PAIR_GEN"
	}
	return fmt.Sprintf("mechanism 0x%x", m)
}

// sealRoundTrip seals and unseals a throwaway secret with the real key.
func (b *Backend) sealRoundTrip(ctx context.Context) error {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	aad := []byte("mlskeyd seal probe")
	blob, err := b.Seal(ctx, secret, aad)
	if err != nil {
		return err
	}
	got, err := b.Unseal(ctx, blob, aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, secret) {
		return errors.New("unsealed probe differs from what was sealed")
	}
	return nil
}

// probeGCM encrypts and decrypts with a session AES key.
func (b *Backend) probeGCM(s p11.SessionHandle) error {
	h, err := b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
	})
	if err != nil {
		return fmt.Errorf("C_GenerateKey(AES-256, session): %w", err)
	}
	defer func() { _ = b.mod.ctx.DestroyObject(s, h) }()
	iv := make([]byte, gcmIVLen)
	pt := []byte("mlskeyd gcm probe")
	params := p11.NewGCMParams(iv, []byte("aad"), gcmTagLen*8)
	defer params.Free()
	if err := b.mod.ctx.EncryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
		return fmt.Errorf("C_EncryptInit(AES-GCM): %w", err)
	}
	ct, err := b.mod.ctx.Encrypt(s, pt)
	if err != nil {
		return fmt.Errorf("C_Encrypt(AES-GCM): %w", err)
	}
	if err := b.mod.ctx.DecryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
		return fmt.Errorf("C_DecryptInit(AES-GCM): %w", err)
	}
	back, err := b.mod.ctx.Decrypt(s, ct)
	if err != nil {
		return fmt.Errorf("C_Decrypt(AES-GCM): %w", err)
	}
	if !bytes.Equal(back, pt) {
		return errors.New("AES-GCM round trip differs")
	}
	return nil
}

func hmacKeyTemplate(token bool) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, token),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_SIGN, true),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, false),
		p11.NewAttribute(p11.CKA_DECRYPT, false),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	}
}

// probeHMAC checks that a session HMAC key gives the same MAC twice and
// different MACs for different inputs (a forwarder that answered garbage
// would fail one of these).
func (b *Backend) probeHMAC(s p11.SessionHandle) error {
	h, err := b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, hmacKeyTemplate(false))
	if err != nil {
		return fmt.Errorf("C_GenerateKey(generic secret, session): %w", err)
	}
	defer func() { _ = b.mod.ctx.DestroyObject(s, h) }()
	m1, err := b.hmacIn(s, h, []byte("a"))
	if err != nil {
		return err
	}
	m2, err := b.hmacIn(s, h, []byte("a"))
	if err != nil {
		return err
	}
	m3, err := b.hmacIn(s, h, []byte("b"))
	if err != nil {
		return err
	}
	if len(m1) != 32 || !bytes.Equal(m1, m2) || bytes.Equal(m1, m3) {
		return errors.New("CKM_SHA256_HMAC gives inconsistent results")
	}
	return nil
}

func (b *Backend) hmacIn(s p11.SessionHandle, h p11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := b.mod.ctx.SignInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}, h); err != nil {
		return nil, fmt.Errorf("C_SignInit(SHA256-HMAC): %w", err)
	}
	mac, err := b.mod.ctx.Sign(s, msg)
	if err != nil {
		return nil, fmt.Errorf("C_Sign(SHA256-HMAC): %w", err)
	}
	return mac, nil
}

func hmacSealTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, sealHMACLabel),
	}
}

// ensureHMACSealKey finds the HMAC sealing keys, creating one if there is
// none. As with the AES key, a race between two processes leaves two keys;
// sealing uses the lowest CKA_ID and unsealing tries all.
func (b *Backend) ensureHMACSealKey(ctx context.Context) error {
	return b.withSession(ctx, func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		ids, err := b.loadHMACSealIDs(s)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			var rnd [16]byte
			if _, err := rand.Read(rnd[:]); err != nil {
				return err
			}
			tmpl := append(hmacKeyTemplate(true),
				p11.NewAttribute(p11.CKA_ID, []byte(hmacIDPrefix+hex.EncodeToString(rnd[:]))),
				p11.NewAttribute(p11.CKA_LABEL, sealHMACLabel))
			if _, err := b.mod.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, tmpl); err != nil {
				return fmt.Errorf("C_GenerateKey(HMAC sealing key): %w", err)
			}
			if ids, err = b.loadHMACSealIDs(s); err != nil {
				return err
			}
			if len(ids) == 0 {
				return errors.New("HMAC sealing key not found after creating it")
			}
		}
		b.sealMu.Lock()
		b.hmacIDs = ids
		b.sealMu.Unlock()
		return nil
	})
}

func (b *Backend) loadHMACSealIDs(s p11.SessionHandle) ([]string, error) {
	hs, err := b.findAll(s, hmacSealTemplate())
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, h := range hs {
		attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
		if err != nil {
			if handleInvalid(err) {
				continue
			}
			return nil, fmt.Errorf("C_GetAttributeValue(CKA_ID): %w", err)
		}
		if id := string(attrs[0].Value); strings.HasPrefix(id, hmacIDPrefix) {
			ids = append(ids, id)
			b.cache.put(objKey{p11.CKO_SECRET_KEY, id}, h)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// blobKey derives the one-blob AES key inside the token.
func (b *Backend) blobKey(ctx context.Context, id string, salt []byte) ([]byte, error) {
	var k []byte
	msg := append(append([]byte{}, sealHMACContext...), salt...)
	err := b.withKey(ctx, objKey{p11.CKO_SECRET_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		var err error
		k, err = b.hmacIn(s, h, msg)
		return err
	})
	if err == nil && len(k) != 32 {
		clear(k)
		return nil, fmt.Errorf("HMAC of %d bytes", len(k))
	}
	return k, err
}

func gcmWith(k []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

func (b *Backend) sealHMAC(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	b.sealMu.RLock()
	ids := b.hmacIDs
	b.sealMu.RUnlock()
	if len(ids) == 0 {
		return nil, devErr("seal", errors.New("no HMAC sealing key"))
	}
	salt := make([]byte, sealHMACSalt)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	k, err := b.blobKey(ctx, ids[0], salt)
	if err != nil {
		return nil, devErr("seal", err)
	}
	defer clear(k)
	g, err := gcmWith(k)
	if err != nil {
		return nil, devErr("seal", err)
	}
	blob := append([]byte{sealHMACVersion}, salt...)
	return g.Seal(blob, make([]byte, g.NonceSize()), plaintext, aad), nil
}

func (b *Backend) unsealHMAC(ctx context.Context, blob, aad []byte) ([]byte, error) {
	if len(blob) < 1+sealHMACSalt+gcmTagLen {
		return nil, devErr("unseal", fmt.Errorf("%w: malformed", ErrSealedBlob))
	}
	salt, ct := blob[1:1+sealHMACSalt], blob[1+sealHMACSalt:]
	b.sealMu.RLock()
	ids := b.hmacIDs
	b.sealMu.RUnlock()
	tried := map[string]bool{}
	for round := 0; round < 2; round++ {
		for _, id := range ids {
			if tried[id] {
				continue
			}
			tried[id] = true
			k, err := b.blobKey(ctx, id, salt)
			if err != nil {
				if !errors.Is(err, keystore.ErrDeviceKeyNotFound) {
					return nil, devErr("unseal", err)
				}
				continue
			}
			g, err := gcmWith(k)
			clear(k)
			if err != nil {
				return nil, devErr("unseal", err)
			}
			if pt, err := g.Open(nil, make([]byte, g.NonceSize()), ct, aad); err == nil {
				return pt, nil
			}
		}
		if round == 1 {
			break
		}
		// Another process may have added a sealing key: look again.
		err := b.withSession(ctx, func(s p11.SessionHandle) error {
			var err error
			ids, err = b.loadHMACSealIDs(s)
			return err
		})
		if err != nil {
			return nil, devErr("unseal", err)
		}
		if len(ids) > 0 {
			b.sealMu.Lock()
			b.hmacIDs = ids
			b.sealMu.Unlock()
		}
	}
	return nil, devErr("unseal", ErrSealedBlob)
}
