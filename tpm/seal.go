package tpm

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// maxSealData is the most sensitive data a sealed data object holds
// (MAX_SYM_DATA, 128 bytes on every TPM we know). The first 32 bytes are
// the aad's hash.
const (
	maxSealData  = 128
	MaxSealInput = maxSealData - sha256.Size // largest plaintext Seal takes
)

// sealTemplate is a KEYEDHASH sealed data object: fixedTPM and fixedParent
// so it can only be unsealed by this TPM under this SRK, userWithAuth with
// an empty auth value (the blob is the credential), no sign or decrypt
// (that makes it a data object), and no sensitiveDataOrigin because the
// data comes from the caller.
func sealTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// Seal stores sha256(aad) || plaintext in a sealed data object created
// with TPM2_Create under the SRK. The data goes to the TPM parameter-
// encrypted under a salted session. The blob is 0x02 || TPM2B_PUBLIC ||
// TPM2B_PRIVATE; the plaintext may be at most MaxSealInput (96) bytes.
// The keystore uses it only where there are no epochs (the simulator);
// elsewhere SealIn.
func (b *Backend) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return b.seal(ctx, "", plaintext, aad)
}

func (b *Backend) seal(ctx context.Context, epoch string, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > MaxSealInput {
		return nil, devErr("seal", fmt.Errorf("%w: %d-byte plaintext; a TPM sealed object holds at most %d bytes besides the aad hash",
			keystore.ErrInvalidArgument, len(plaintext), MaxSealInput))
	}
	h := sha256.Sum256(aad)
	data := make([]byte, 0, sha256.Size+len(plaintext))
	data = append(append(data, h[:]...), plaintext...)
	defer clear(data)

	var out []byte
	err := b.do(ctx, "seal", func() error {
		parent := b.srkAuth(b.encSession(tpm2.AESEncryption(128, tpm2.EncryptIn)))
		if epoch != "" {
			p, err := b.epochParent(epoch)
			if err != nil {
				return err
			}
			parent = tpm2.AuthHandle{Handle: p.Handle, Name: p.Name, Auth: b.encSession(tpm2.AESEncryption(128, tpm2.EncryptIn))}
		}
		return b.withObjectSlot(func() error {
			rsp, err := tpm2.Create{
				ParentHandle: parent,
				InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
					Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
				}},
				InPublic: tpm2.New2B(sealTemplate()),
			}.Execute(b.tpm)
			if err != nil {
				return cmdErr("TPM2_Create(sealed data)", err)
			}
			out = encodeBlob(blobSealed, rsp.OutPublic, rsp.OutPrivate)
			if epoch != "" {
				out = append(append([]byte{blobSealedEpoch, byte(len(epoch))}, epoch...), out[1:]...)
			}
			return nil
		})
	})
	return out, err
}

// Unseal loads the sealed object (under its epoch's parent, or the SRK for
// a blob from before epochs), reads it with TPM2_Unseal (the output
// parameter-encrypted under a salted session), flushes it and checks the
// aad hash in constant time. A blob whose epoch was destroyed fails with
// an error wrapping keystore.ErrEpochDestroyed.
func (b *Backend) Unseal(ctx context.Context, sealed, aad []byte) ([]byte, error) {
	epoch := ""
	if len(sealed) > 0 && sealed[0] == blobSealedEpoch {
		var err error
		if epoch, sealed, err = splitEpochBlob(sealed, blobSealed); err != nil {
			return nil, devErr("unseal", err)
		}
	}
	bl, err := parseBlob(sealed, blobSealed)
	if err != nil {
		return nil, devErr("unseal", err)
	}
	if a := bl.area; a.Type != tpm2.TPMAlgKeyedHash || !a.ObjectAttributes.FixedTPM || !a.ObjectAttributes.FixedParent ||
		a.ObjectAttributes.SignEncrypt || a.ObjectAttributes.Decrypt {
		return nil, devErr("unseal", fmt.Errorf("%w: not a sealed data object", ErrBadBlob))
	}
	var data []byte
	err = b.do(ctx, "unseal", func() error {
		parent := b.srkAuth(nil)
		if epoch != "" {
			p, err := b.epochParent(epoch)
			if err != nil {
				return err
			}
			parent = tpm2.AuthHandle{Handle: p.Handle, Name: p.Name, Auth: tpm2.PasswordAuth(nil)}
		}
		obj, err := b.loadUnder(parent, bl)
		if err != nil {
			return err
		}
		rsp, err := tpm2.Unseal{
			ItemHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name,
				Auth: b.encSession(tpm2.AESEncryption(128, tpm2.EncryptOut))},
		}.Execute(b.tpm)
		ferr := b.flush(obj.Handle)
		if err != nil {
			return cmdErr("TPM2_Unseal", err)
		}
		data = rsp.OutData.Buffer
		return ferr
	})
	if err != nil {
		clear(data)
		return nil, err
	}
	defer clear(data)
	h := sha256.Sum256(aad)
	if len(data) < sha256.Size || subtle.ConstantTimeCompare(data[:sha256.Size], h[:]) != 1 {
		return nil, devErr("unseal", ErrSealedBlob)
	}
	return append([]byte(nil), data[sha256.Size:]...), nil
}
