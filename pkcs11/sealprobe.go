package pkcs11

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
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
// Both modes seal under the keystore's epoch keys (seal.go): one token key
// per epoch, CKA_ID = the epoch id, the epoch id in the blob's header, and
// an epoch's blobs useless once its key is destroyed.
//
//   - gcm: CKM_AES_GCM under the epoch's AES-256 key "mlskeyd:seal-epoch".
//   - hmac-kdf: for tokens that offer no AES-GCM. p11-kit 0.24's RPC
//     forwards no mechanism with a parameter it does not know, so behind
//     p11-kit-client.so AES-GCM, AES-CBC-PAD and AES-KEY-WRAP-PAD all fail
//     with CKR_MECHANISM_INVALID, while CKM_SHA256_HMAC (no parameter)
//     works. The epoch's key is a 32-byte generic secret
//     "mlskeyd:seal-hmac-epoch" (private, sensitive, never extractable,
//     generated in the token, sign only), found and checked like the AES
//     epoch keys. It derives a one-blob key:
//     K = HMAC-SHA256_token("mlskeyd seal-hmac v1" || salt) with a random
//     32-byte salt, and the daemon encrypts with AES-256-GCM under K (zero
//     nonce: K is used once), header and caller's aad authenticated. Blob =
//     0x03 || len(epoch) || epoch || salt || ciphertext || tag. Without the
//     epoch's token key nobody can compute K, so a copied catalog is as
//     useless as with the gcm mode, and destroying the epoch makes its
//     blobs useless for good; K itself is in daemon memory for the one
//     operation, as the unsealed private key is anyway, and wiped after.

const (
	sealModeGCM  = "gcm"
	sealModeHMAC = "hmac-kdf"

	sealHMACEpochLabel = "mlskeyd:seal-hmac-epoch"
	sealHMACSalt       = 32
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

// setUpSealing picks the sealing mode by trying AES-GCM, then the HMAC
// fallback, each with a throwaway session key (so that no token key is made
// for a mechanism that does not work); the epoch keys themselves are made
// by NewEpoch, which proves each with a round trip. A failure of both is recorded in
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
	try := func(mode string, mechs []uint, probe func() error) bool {
		for _, m := range mechs {
			if !has[m] {
				why = append(why, fmt.Sprintf("%s: %s not offered", mode, mechName(m)))
				return false
			}
		}
		err := probe()
		if sessionLost(err) || deviceGone(err) || errors.Is(err, ErrClosed) {
			fatal = err
			return false
		}
		if err != nil {
			why = append(why, fmt.Sprintf("%s: %v", mode, err))
			return false
		}
		return true
	}
	mode := sealModeGCM
	ok := try(sealModeGCM, []uint{p11.CKM_AES_KEY_GEN, p11.CKM_AES_GCM},
		func() error { return b.withSession(ctx, "probe", b.probeGCM) })
	if !ok && fatal == nil {
		mode = sealModeHMAC
		ok = try(sealModeHMAC, []uint{p11.CKM_GENERIC_SECRET_KEY_GEN, p11.CKM_SHA256_HMAC},
			func() error { return b.withSession(ctx, "probe", b.probeHMAC) })
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
		b.sealMode, b.sealErr = mode, nil
		return nil
	}
	b.sealMode, b.sealErr = "", errors.New(strings.Join(why, "; "))
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

// epochRoundTrip seals and unseals a throwaway secret with the epoch's
// new key.
func (b *Backend) epochRoundTrip(ctx context.Context, epoch string) error {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	aad := []byte("mlskeyd seal probe")
	blob, err := b.SealIn(ctx, epoch, secret, aad)
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

// newHMACEpoch generates the epoch's HMAC key in the token and checks it
// like an AES epoch key.
func (b *Backend) newHMACEpoch(ctx context.Context, id string) error {
	tmpl := append(hmacKeyTemplate(true),
		p11.NewAttribute(p11.CKA_ID, []byte(id)),
		p11.NewAttribute(p11.CKA_LABEL, sealHMACEpochLabel))
	return b.newEpochKey(ctx, id, p11.CKM_GENERIC_SECRET_KEY_GEN, tmpl, p11.CKK_GENERIC_SECRET, objKey{classHMACSecret, id})
}

// blobKey derives the one-blob AES key inside the token, with the HMAC key
// of the epoch.
func (b *Backend) blobKey(ctx context.Context, op, epoch string, salt []byte) ([]byte, error) {
	var k []byte
	msg := append(append([]byte{}, sealHMACContext...), salt...)
	err := b.withKey(ctx, op, objKey{classHMACSecret, epoch}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
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

// sealHMACIn seals in the hmac-kdf mode under the epoch's HMAC key.
func (b *Backend) sealHMACIn(ctx context.Context, epoch string, plaintext, aad []byte) ([]byte, error) {
	salt := make([]byte, sealHMACSalt)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	k, err := b.blobKey(ctx, "seal", epoch, salt)
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		err = fmt.Errorf("epoch %s: %w", epoch, keystore.ErrEpochDestroyed)
	}
	if err != nil {
		return nil, devErr("seal", err)
	}
	defer clear(k)
	g, err := gcmWith(k)
	if err != nil {
		return nil, devErr("seal", err)
	}
	hdr := sealHeader(sealV3, epoch)
	blob := append(append([]byte(nil), hdr...), salt...)
	return g.Seal(blob, make([]byte, g.NonceSize()), plaintext, append(hdr, aad...)), nil
}

func (b *Backend) unsealHMAC(ctx context.Context, blob, aad []byte) ([]byte, error) {
	epoch, hdr, rest, err := parseHeader(blob, sealV3, sealHMACSalt+gcmTagLen)
	if err != nil {
		return nil, devErr("unseal", err)
	}
	salt, ct := rest[:sealHMACSalt], rest[sealHMACSalt:]
	k, err := b.blobKey(ctx, "unseal", epoch, salt)
	if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
		err = fmt.Errorf("epoch %q: %w", epoch, keystore.ErrEpochDestroyed)
	}
	if err != nil {
		return nil, devErr("unseal", err)
	}
	g, err := gcmWith(k)
	clear(k)
	if err != nil {
		return nil, devErr("unseal", err)
	}
	pt, err := g.Open(nil, make([]byte, g.NonceSize()), ct, append(append([]byte(nil), hdr...), aad...))
	if err != nil {
		return nil, devErr("unseal", ErrSealedBlob)
	}
	return pt, nil
}
