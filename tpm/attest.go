package tpm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
)

var _ keystore.Attester = (*Backend)(nil)

// Nonce bounds for Attest: TPM2_Certify's qualifyingData is a TPM2B_DATA,
// which holds at most 64 bytes (the size of a TPMT_HA with SHA-512).
const (
	MinAttestNonce = 1
	MaxAttestNonce = 64
)

// EK certificate NV indices (TCG EK Credential Profile).
const (
	ekCertIndexRSA tpm2.TPMHandle = 0x01c00002
	ekCertIndexECC tpm2.TPMHandle = 0x01c0000a
)

// akTemplate is the TCG attestation key template (go-tpm-tools'
// client.AKTemplateECC): a restricted ECDSA P-256 / SHA-256 signing key,
// created in the TPM and bound to it, with an empty auth value. The
// unique field holds two 32-byte zero coordinates, as in that template,
// so the AK is the same key other tools derive from it.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			Restricted:          true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// Attest certifies a key with TPM2_Certify, signed by an attestation key
// (AK) that is a primary key of the endorsement hierarchy made from the
// TCG AK template, with nonce (1 to 64 bytes) as qualifying data. The AK
// is re-created for each attestation and flushed afterwards (the same
// template gives the same key every time), so it never holds a transient
// slot between calls. Any EK certificate found in NV (ECC, then RSA) is
// returned as well. Verify the result with attest.VerifyCertify.
func (b *Backend) Attest(ctx context.Context, ref []byte, alg keystore.Algorithm, nonce []byte) (*keystore.Attestation, error) {
	if len(nonce) < MinAttestNonce || len(nonce) > MaxAttestNonce {
		return nil, devErr("attest", fmt.Errorf("%w: nonce is %d bytes; it must be %d to %d",
			keystore.ErrInvalidArgument, len(nonce), MinAttestNonce, MaxAttestNonce))
	}
	_, bl, err := b.keyBlob(ref, alg)
	if err != nil {
		return nil, devErr("attest", err)
	}
	key := blobKeyOf(ref)
	var out *keystore.Attestation
	err = b.do(ctx, "attest", func() (err error) {
		b.roomForAK(key)
		// The key is loaded before the AK is made: loading under an epoch
		// parent briefly takes a slot for the parent too. It leaves the
		// cache meanwhile, so that making room for the AK (withObjectSlot,
		// on a TPM with fewer slots than assumed) evicts only other keys.
		obj, err := b.loaded(bl, key)
		if err != nil {
			return err
		}
		b.lru.remove(key)
		cached := false
		recache := func() {
			if !cached {
				cached = true
				b.lru.add(key, obj, bl.epoch)
			}
		}
		defer recache()
		ak, akPub, err := b.createAK()
		if err != nil {
			return err
		}
		defer func() {
			if ferr := b.flush(ak.Handle); ferr != nil && err == nil {
				err = ferr
			}
		}()
		rsp, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(b.tpm)
		// Certified: the key may be evicted again to make room for the EK.
		recache()
		if err != nil {
			return cmdErr("TPM2_Certify", err)
		}
		certs, found, err := b.readEKCerts()
		if err != nil {
			return err
		}
		ekPub, err := b.endorsementKey(found)
		if err != nil {
			return err
		}
		out = &keystore.Attestation{
			Format:         attest.Format,
			Statement:      append([]byte(nil), rsp.CertifyInfo.Bytes()...),
			Signature:      tpm2.Marshal(rsp.Signature),
			AttestationKey: tpm2.Marshal(*akPub),
			KeyPublicArea:  append([]byte(nil), bl.pub.Bytes()...),
			Certificates:   certs,
			EndorsementKey: ekPub,
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ekTemplateFor returns the TCG default EK template (EK Credential
// Profile, low range) of a key type: RSA 2048 or ECC P-256.
func ekTemplateFor(t tpm2.TPMIAlgPublic) (tpm2.TPMTPublic, bool) {
	switch t {
	case tpm2.TPMAlgRSA:
		return tpm2.RSAEKTemplate, true
	case tpm2.TPMAlgECC:
		return tpm2.ECCEKTemplate, true
	}
	return tpm2.TPMTPublic{}, false
}

// endorsementKey returns the public area of the EK that the certificates
// read from NV are for: the ECC P-256 EK when its certificate index holds
// one or when there is none at all (it is quick to make), else the RSA
// 2048 EK. It is made once, from the TCG template, and kept.
func (b *Backend) endorsementKey(found []tpm2.TPMHandle) ([]byte, error) {
	if b.ekPub != nil {
		return b.ekPub, nil
	}
	typ := tpm2.TPMAlgECC
	if !slices.Contains(found, ekCertIndexECC) && slices.Contains(found, ekCertIndexRSA) {
		typ = tpm2.TPMAlgRSA
	}
	tmpl, _ := ekTemplateFor(typ)
	ek, pub, err := b.createEK(tmpl)
	if err != nil {
		return nil, err
	}
	if err := b.flush(ek.Handle); err != nil {
		return nil, err
	}
	b.ekPub = tpm2.Marshal(*pub)
	return b.ekPub, nil
}

// createEK creates an endorsement key from tmpl, making room if the TPM
// has no free object slot.
func (b *Backend) createEK(tmpl tpm2.TPMTPublic) (tpm2.NamedHandle, *tpm2.TPMTPublic, error) {
	var rsp *tpm2.CreatePrimaryResponse
	err := b.withObjectSlot(func() error {
		var err error
		rsp, err = tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tmpl),
		}.Execute(b.tpm)
		return cmdErr("TPM2_CreatePrimary(EK)", err)
	})
	if err != nil {
		return tpm2.NamedHandle{}, nil, err
	}
	ek := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		b.flush(ek.Handle)
		return tpm2.NamedHandle{}, nil, fmt.Errorf("TPM2_CreatePrimary(EK): public area: %w", err)
	}
	return ek, pub, nil
}

// ActivateCredential decrypts a credential made (TPM2_MakeCredential, or
// tpm2.CreateCredential in software) for the Name of the attestation key
// that Attest uses, encrypted to the endorsement key endorsementKey (a
// TPMT_PUBLIC, as Attest returned it). The TPM opens it only if both keys
// are its own, which is what proves to the verifier that the AK lives in
// the TPM that the EK certificate vouches for. The EK's policy (TCG
// default: PolicySecret of the endorsement hierarchy, whose auth value is
// taken to be empty) is satisfied with a policy session.
func (b *Backend) ActivateCredential(ctx context.Context, endorsementKey, credentialBlob, secret []byte) ([]byte, error) {
	want, err := tpm2.Unmarshal[tpm2.TPMTPublic](endorsementKey)
	if err != nil {
		return nil, devErr("activate credential", fmt.Errorf("%w: endorsement key is not a TPMT_PUBLIC", keystore.ErrInvalidArgument))
	}
	tmpl, ok := ekTemplateFor(want.Type)
	if !ok {
		return nil, devErr("activate credential", fmt.Errorf("%w: endorsement key type 0x%04x, want RSA or ECC", keystore.ErrInvalidArgument, uint16(want.Type)))
	}
	var out []byte
	err = b.do(ctx, "activate credential", func() (err error) {
		b.roomForAK([32]byte{})
		ak, _, err := b.createAK()
		if err != nil {
			return err
		}
		defer func() {
			if ferr := b.flush(ak.Handle); ferr != nil && err == nil {
				err = ferr
			}
		}()
		ek, ekPub, err := b.createEK(tmpl)
		if err != nil {
			return err
		}
		defer func() {
			if ferr := b.flush(ek.Handle); ferr != nil && err == nil {
				err = ferr
			}
		}()
		if !bytes.Equal(tpm2.Marshal(*ekPub), endorsementKey) {
			return fmt.Errorf("%w: the endorsement key is not this TPM's", keystore.ErrInvalidArgument)
		}
		b.dropSignSession()
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle: tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name,
				Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
		}.Execute(b.tpm)
		if err != nil {
			// The TPM cannot tell a credential for another AK from a
			// damaged one: both fail its integrity or value checks.
			if isRC(err, tpm2.TPMRCIntegrity, tpm2.TPMRCValue, tpm2.TPMRCSize, tpm2.TPMRCScheme, tpm2.TPMRCECCPoint,
				tpm2.TPMRCInsufficient, tpm2.TPMRCNoResult) {
				return fmt.Errorf("%w: the credential does not open with this TPM's attestation and endorsement keys: %w",
					keystore.ErrInvalidArgument, err)
			}
			return fmt.Errorf("TPM2_ActivateCredential: %w", err)
		}
		out = append([]byte(nil), rsp.CertInfo.Buffer...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ekPolicy satisfies the TCG default EK policy: PolicySecret with the
// endorsement hierarchy's (empty) auth value.
func ekPolicy(t transport.TPM, session tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: session,
		NonceTPM:      nonceTPM,
	}.Execute(t)
	return err
}

// roomForAK flushes least recently used keys so that the SRK, the AK and
// the key to certify fit in the SRK + LoadedKeys slots the cache assumes:
// at most LoadedKeys-1 cached keys, the key to certify among them, stay
// loaded. If the key is cached it is made the most recently used first,
// so it is never the one flushed.
func (b *Backend) roomForAK(key [32]byte) {
	keep := b.lru.max - 2 // other keys besides the AK and the key
	if _, ok := b.lru.get(key); ok {
		keep = b.lru.max - 1 // the key itself is among the entries
	}
	for len(b.lru.entries) > max(keep, 0) {
		if e := b.lru.entries[0]; e.key == key {
			break
		}
		// A failed flush drops the entry anyway; a missing slot shows up
		// as TPM_RC_OBJECT_MEMORY later, which withObjectSlot handles.
		_ = b.evictOldest()
	}
}

// createAK creates the attestation key under the endorsement hierarchy
// (empty auth value), making room if the TPM has no free object slot.
func (b *Backend) createAK() (tpm2.NamedHandle, *tpm2.TPMTPublic, error) {
	var rsp *tpm2.CreatePrimaryResponse
	err := b.withObjectSlot(func() error {
		var err error
		rsp, err = tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(akTemplate()),
		}.Execute(b.tpm)
		return cmdErr("TPM2_CreatePrimary(AK)", err)
	})
	if err != nil {
		return tpm2.NamedHandle{}, nil, err
	}
	ak := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		b.flush(ak.Handle)
		return tpm2.NamedHandle{}, nil, fmt.Errorf("TPM2_CreatePrimary(AK): public area: %w", err)
	}
	return ak, pub, nil
}

// readEKCerts returns the EK certificates stored at the TCG NV indices
// (ECC first, then RSA) and the indices they came from. An index that is
// absent or unreadable (any TPM_RC) is skipped: an EK certificate is
// optional evidence.
func (b *Backend) readEKCerts() ([][]byte, []tpm2.TPMHandle, error) {
	var certs [][]byte
	var found []tpm2.TPMHandle
	for _, idx := range []tpm2.TPMHandle{ekCertIndexECC, ekCertIndexRSA} {
		c, err := b.readNV(idx)
		var rc tpm2.TPMRC
		switch {
		case err == nil && len(c) > 0:
			certs = append(certs, c)
			found = append(found, idx)
		case err == nil, errors.As(err, &rc):
		default:
			return nil, nil, err
		}
	}
	return certs, found, nil
}

// nvChunk is read at a time: TPM_PT_NV_BUFFER_MAX is at least 512 on the
// TPMs we know (1024 on most).
const nvChunk = 512

// readNV reads a whole NV index with owner authorisation (empty auth),
// as the EK certificate indices allow.
func (b *Backend) readNV(idx tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(b.tpm)
	if err != nil {
		return nil, cmdErr(fmt.Sprintf("TPM2_NV_ReadPublic(0x%08x)", uint32(idx)), err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("TPM2_NV_ReadPublic(0x%08x): %w", uint32(idx), err)
	}
	nv := tpm2.NamedHandle{Handle: idx, Name: rp.NVName}
	out := make([]byte, 0, pub.DataSize)
	for off := 0; off < int(pub.DataSize); {
		n := min(nvChunk, int(pub.DataSize)-off)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    nv,
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(b.tpm)
		if err != nil {
			return nil, cmdErr(fmt.Sprintf("TPM2_NV_Read(0x%08x)", uint32(idx)), err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("TPM2_NV_Read(0x%08x): no data at offset %d", uint32(idx), off)
		}
		out = append(out, rsp.Data.Buffer...)
		off += len(rsp.Data.Buffer)
	}
	return out, nil
}
