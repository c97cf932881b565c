package pkcs11

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

const (
	sealLabel   = "mlskeyd:seal-v1"
	sealVersion = 0x01
	gcmIVLen    = 12
	gcmTagLen   = 16
)

// sealTemplate finds every sealing key.
func sealTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, sealLabel),
	}
}

// loadSealIDs returns the CKA_IDs of all sealing keys, sorted.
func (b *Backend) loadSealIDs(s p11.SessionHandle) ([]string, error) {
	hs, err := b.findAll(s, sealTemplate())
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
		if id := string(attrs[0].Value); id != "" {
			ids = append(ids, id)
			b.cache.put(objKey{p11.CKO_SECRET_KEY, id}, h)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// ensureSealKey finds the AES-256 sealing key, creating it if missing.
//
// Two processes may create one at the same time. Each key gets a random
// CKA_ID; everyone seals with the key whose CKA_ID sorts first, and Unseal
// tries every sealing key (GCM authenticates, so trying is safe), so blobs
// sealed under a key that lost the race still open.
func (b *Backend) ensureSealKey(ctx context.Context) error {
	return b.withSession(ctx, func(s p11.SessionHandle) error {
		if err := b.requireLogin(s); err != nil {
			return err
		}
		ids, err := b.loadSealIDs(s)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			if err := b.createSealKey(s); err != nil {
				return err
			}
			if ids, err = b.loadSealIDs(s); err != nil { // find again
				return err
			}
			if len(ids) == 0 {
				return fmt.Errorf("sealing key not found after creating it")
			}
		}
		b.sealMu.Lock()
		b.sealIDs = ids
		b.sealMu.Unlock()
		return nil
	})
}

// createSealKey makes a new AES-256 sealing key with a random CKA_ID.
func (b *Backend) createSealKey(s p11.SessionHandle) error {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_ID, []byte(hex.EncodeToString(rnd[:]))),
		p11.NewAttribute(p11.CKA_LABEL, sealLabel),
	}
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}
	if _, err := b.mod.ctx.GenerateKey(s, mech, tmpl); err != nil {
		return fmt.Errorf("C_GenerateKey(AES-256): %w", err)
	}
	return nil
}

// Seal encrypts plaintext with AES-256-GCM under the token's sealing key.
// The blob is 0x01 || 12-byte random IV || ciphertext || 16-byte tag, and
// aad is authenticated.
func (b *Backend) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	b.sealMu.RLock()
	mode, sealErr := b.sealMode, b.sealErr
	var id string
	if len(b.sealIDs) > 0 {
		id = b.sealIDs[0]
	}
	b.sealMu.RUnlock()
	// The mode was chosen by probing at Open (sealprobe.go).
	switch {
	case mode == sealModeHMAC:
		return b.sealHMAC(ctx, plaintext, aad)
	case mode != sealModeGCM || id == "":
		return nil, devErr("seal", fmt.Errorf("sealing is unavailable on this token: %v", sealErr))
	}
	iv := make([]byte, gcmIVLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	var ct []byte
	err := b.withKey(ctx, objKey{p11.CKO_SECRET_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		params := p11.NewGCMParams(iv, aad, gcmTagLen*8)
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
	if err != nil {
		return nil, devErr("seal", err)
	}
	if len(ct) != len(plaintext)+gcmTagLen {
		return nil, devErr("seal", fmt.Errorf("AES-GCM output of %d bytes for %d", len(ct), len(plaintext)))
	}
	blob := make([]byte, 0, 1+gcmIVLen+len(ct))
	blob = append(blob, sealVersion)
	blob = append(blob, iv...)
	return append(blob, ct...), nil
}

// Unseal reverses Seal. A wrong aad, a tampered blob or a blob from another
// token returns an error wrapping ErrSealedBlob.
func (b *Backend) Unseal(ctx context.Context, blob, aad []byte) ([]byte, error) {
	if len(blob) > 0 && blob[0] == sealHMACVersion {
		return b.unsealHMAC(ctx, blob, aad) // sealprobe.go
	}
	if len(blob) < 1+gcmIVLen+gcmTagLen || blob[0] != sealVersion {
		return nil, devErr("unseal", fmt.Errorf("%w: malformed", ErrSealedBlob))
	}
	iv, ct := blob[1:1+gcmIVLen], blob[1+gcmIVLen:]
	b.sealMu.RLock()
	ids := b.sealIDs
	b.sealMu.RUnlock()
	tried := map[string]bool{}
	for round := 0; round < 2; round++ {
		for _, id := range ids {
			if tried[id] {
				continue
			}
			tried[id] = true
			pt, err := b.unsealWith(ctx, id, iv, ct, aad)
			if err == nil {
				return pt, nil
			}
			if errors.Is(err, keystore.ErrDeviceKeyNotFound) {
				continue
			}
			if !isCode(err, p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE, p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED) {
				return nil, devErr("unseal", err)
			}
		}
		if round == 1 {
			break
		}
		// Another process may have added a sealing key: look again.
		err := b.withSession(ctx, func(s p11.SessionHandle) error {
			var err error
			ids, err = b.loadSealIDs(s)
			return err
		})
		if err != nil {
			return nil, devErr("unseal", err)
		}
		if len(ids) > 0 {
			b.sealMu.Lock()
			b.sealIDs = ids
			b.sealMu.Unlock()
		}
	}
	return nil, devErr("unseal", ErrSealedBlob)
}

func (b *Backend) unsealWith(ctx context.Context, id string, iv, ct, aad []byte) ([]byte, error) {
	var pt []byte
	err := b.withKey(ctx, objKey{p11.CKO_SECRET_KEY, id}, func(s p11.SessionHandle, h p11.ObjectHandle) error {
		params := p11.NewGCMParams(iv, aad, gcmTagLen*8)
		defer params.Free()
		if err := b.mod.ctx.DecryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, h); err != nil {
			return fmt.Errorf("C_DecryptInit(AES-GCM): %w", err)
		}
		var err error
		if pt, err = b.mod.ctx.Decrypt(s, ct); err != nil {
			return fmt.Errorf("C_Decrypt: %w", err)
		}
		return nil
	})
	return pt, err
}
