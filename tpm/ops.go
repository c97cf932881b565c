package tpm

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// spec returns the algorithm's mapping if the TPM supports it.
func (b *Backend) spec(alg keystore.Algorithm) (algSpec, error) {
	s, err := specFor(alg)
	if err != nil {
		return s, err
	}
	for _, a := range b.algs {
		if a == alg {
			return s, nil
		}
	}
	return s, fmt.Errorf("%w: %s (%s)", keystore.ErrUnsupportedAlgorithm, alg, b.notes[alg])
}

// keyBlob parses a key reference and checks it against alg.
func (b *Backend) keyBlob(ref []byte, alg keystore.Algorithm) (algSpec, *blob, error) {
	s, err := b.spec(alg)
	if err != nil {
		return s, nil, err
	}
	if len(ref) == 0 {
		return s, nil, fmt.Errorf("%w: %w: empty key reference", keystore.ErrDeviceKeyNotFound, ErrBadBlob)
	}
	key := blobKeyOf(ref)
	if bl := b.parsed.get(key); bl != nil {
		if err := bl.matches(s); err != nil {
			return s, nil, err
		}
		return s, bl, nil
	}
	bl, err := parseKeyRef(ref)
	if err != nil {
		return s, nil, err
	}
	if err := bl.matches(s); err != nil {
		return s, nil, err
	}
	b.parsed.put(key, bl)
	return s, bl, nil
}

// parseKeyRef parses a key reference of any kind and checks what it says
// of itself (epoch id, revocation bit against the key's policy); nothing
// in it depends on the Backend.
func parseKeyRef(ref []byte) (*blob, error) {
	var err error
	epoch := ""
	var rev *revRef
	switch ref[0] {
	case blobKeyEpoch:
		if epoch, ref, err = splitEpochBlob(ref, blobKey); err != nil {
			return nil, err
		}
	case blobKeyRevoke:
		r, rest, err := decodeRev(ref[1:])
		if err != nil {
			return nil, err
		}
		rev = &r
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return nil, fmt.Errorf("%w: truncated epoch header", ErrBadBlob)
		}
		if n := int(rest[0]); n > 0 {
			epoch = string(rest[1 : 1+n])
			if err := checkEpochID(epoch); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadBlob, err)
			}
		}
		ref = append([]byte{blobKey}, rest[1+int(rest[0]):]...)
	}
	bl, err := parseBlob(ref, blobKey)
	if err != nil {
		return nil, err
	}
	bl.epoch, bl.rev = epoch, rev
	if rev != nil {
		// The bit named in the header must be the one the key's policy
		// checks, or retiring the key would set another key's bit.
		want, err := revPolicy(*rev)
		if err != nil {
			return nil, err
		}
		if bl.area.ObjectAttributes.UserWithAuth || !bytes.Equal(bl.area.AuthPolicy.Buffer, want) {
			return nil, fmt.Errorf("%w: the key's policy does not check the revocation bit its reference names", ErrBadBlob)
		}
	}
	return bl, nil
}

// Generate creates an ECC key under the SRK with TPM2_Create. The TPM
// returns the public area and the private area encrypted under the SRK;
// the reference is 0x01 || TPM2B_PUBLIC || TPM2B_PRIVATE and nothing is
// kept in the TPM. id is not used: the catalog holds the blob.
func (b *Backend) Generate(ctx context.Context, id string, alg keystore.Algorithm) (ref, pub []byte, err error) {
	return b.generate(ctx, "", alg)
}

// GenerateIn is Generate under the epoch's parent instead of the SRK: the
// key dies with its epoch. The reference is 0x04 || len(epoch) || epoch ||
// TPM2B_PUBLIC || TPM2B_PRIVATE.
func (b *Backend) GenerateIn(ctx context.Context, epoch, id string, alg keystore.Algorithm) (ref, pub []byte, err error) {
	if err := checkEpochID(epoch); err != nil {
		return nil, nil, devErr("generate", err)
	}
	return b.generate(ctx, epoch, alg)
}

func (b *Backend) generate(ctx context.Context, epoch string, alg keystore.Algorithm) (ref, pub []byte, err error) {
	s, err := b.spec(alg)
	if err != nil {
		return nil, nil, devErr("generate", err)
	}
	err = b.do(ctx, "generate", func() error {
		parent := b.srkAuth(nil)
		if epoch != "" {
			p, err := b.epochParent(epoch)
			if err != nil {
				return err
			}
			parent = tpm2.AuthHandle{Handle: p.Handle, Name: p.Name, Auth: tpm2.PasswordAuth(nil)}
		}
		tmpl := s.template()
		var rev *revRef
		if (!s.sign || b.revSign) && b.RevocationsSupported() {
			r, err := b.allocRev()
			var rc tpm2.TPMRC
			switch {
			case err == nil:
				rev = &r
				b.setRevNote("")
				pol, err := revPolicy(r)
				if err != nil {
					return err
				}
				// Only the USER role (ECDH_ZGen, Sign) needs the policy. The ADMIN
				// role stays with the empty auth value (adminWithPolicy
				// clear) so that TPM2_Certify still attests the key; what
				// it allows besides (ObjectChangeAuth) leaves the policy,
				// and so the bit, in force.
				tmpl.ObjectAttributes.UserWithAuth = false
				tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: pol}
			case errors.As(err, &rc), errors.Is(err, errRevBudget):
				// The key is still made, bound only to its epoch.
				b.setRevNote(err.Error())
			default:
				return err
			}
		}
		var rsp *tpm2.CreateResponse
		err := b.withObjectSlot(func() error {
			var err error
			rsp, err = tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(b.tpm)
			return cmdErr("TPM2_Create", err)
		})
		if err != nil {
			if rev != nil {
				b.unassign(*rev) // no key holds it
			}
			return err
		}
		area, err := rsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("TPM2_Create: public area: %w", err)
		}
		pt, err := area.Unique.ECC()
		if err != nil {
			return fmt.Errorf("TPM2_Create: public area: %w", err)
		}
		x, err := leftPad(pt.X.Buffer, s.coordSize)
		if err != nil {
			return err
		}
		y, err := leftPad(pt.Y.Buffer, s.coordSize)
		if err != nil {
			return err
		}
		pub = append(append([]byte{0x04}, x...), y...)
		ref = encodeBlob(blobKey, rsp.OutPublic, rsp.OutPrivate)
		if rev != nil {
			h := append([]byte{blobKeyRevoke}, rev.encode()...)
			h = append(append(h, byte(len(epoch))), epoch...)
			ref = append(h, ref[1:]...)
		} else if epoch != "" {
			ref = append(append([]byte{blobKeyEpoch, byte(len(epoch))}, epoch...), ref[1:]...)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return ref, pub, nil
}

// Sign signs a digest with TPM2_Sign. The digest must be exactly the size
// of the key's scheme hash (SHA-256/384/512 for P-256/384/521), as the TPM
// requires; the NULL hash-check ticket is allowed because the key is not
// restricted. The result is r || s, each left-padded to the coordinate
// size.
func (b *Backend) Sign(ctx context.Context, ref []byte, alg keystore.Algorithm, digest []byte) ([]byte, error) {
	s, bl, err := b.keyBlob(ref, alg)
	if err != nil {
		return nil, devErr("sign", err)
	}
	if !s.sign {
		return nil, devErr("sign", fmt.Errorf("%w: %s is not a signing algorithm", keystore.ErrWrongRole, alg))
	}
	if len(digest) != s.hashSize {
		return nil, devErr("sign", fmt.Errorf("%w: digest is %d bytes; the key's scheme (ECDSA with SHA-%d) needs %d",
			keystore.ErrInvalidArgument, len(digest), s.hashSize*8, s.hashSize))
	}
	key := blobKeyOf(ref)
	var sig []byte
	err = b.do(ctx, "sign", func() error {
		obj, err := b.loaded(bl, key)
		if err != nil {
			return err
		}
		if bl.rev == nil {
			r, sv, err := signPW(b.tpm, obj.Handle, digest, s.hash)
			if err != nil {
				return cmdErr("TPM2_Sign", err)
			}
			if sig, err = rawSignature(r, sv, s.coordSize); err != nil {
				return fmt.Errorf("TPM2_Sign: %w", err)
			}
			return nil
		}
		// A key with a revocation bit: its policy, through go-tpm.
		auth, err := b.signPolicy(*bl.rev)
		if err != nil {
			return err
		}
		rsp, err := tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: auth},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: s.hash}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(b.tpm)
		if err != nil {
			// A failed command leaves the session's digest as PolicyNV
			// made it; the next key would not match it.
			b.dropSignSession()
			if isRC(err, tpm2.TPMRCPolicyFail) {
				// As in ECDH: the key's index was removed and defined again.
				return fmt.Errorf("TPM2_Sign: %w: %w", keystore.ErrRevoked, err)
			}
			return cmdErr("TPM2_Sign", err)
		}
		e, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("TPM2_Sign: %w", err)
		}
		sig, err = rawSignature(e.SignatureR.Buffer, e.SignatureS.Buffer, s.coordSize)
		return err
	})
	return sig, err
}

// rawSignature is r || s, each left-padded to the curve's coordinate size.
func rawSignature(r, s []byte, size int) ([]byte, error) {
	rp, err := leftPad(r, size)
	if err != nil {
		return nil, err
	}
	sp, err := leftPad(s, size)
	if err != nil {
		return nil, err
	}
	return append(rp, sp...), nil
}

// ECDH computes the x-coordinate of the shared point with TPM2_ECDH_ZGen.
// The output is a secret, so the command runs under a salted session that
// encrypts it on the way back.
func (b *Backend) ECDH(ctx context.Context, ref []byte, alg keystore.Algorithm, peer []byte) ([]byte, error) {
	s, bl, err := b.keyBlob(ref, alg)
	if err != nil {
		return nil, devErr("ecdh", err)
	}
	if s.sign {
		return nil, devErr("ecdh", fmt.Errorf("%w: %s is not a key-agreement algorithm", keystore.ErrWrongRole, alg))
	}
	if len(peer) != 1+2*s.coordSize || peer[0] != 0x04 {
		return nil, devErr("ecdh", fmt.Errorf("%w: want a %d-byte uncompressed point, got %d bytes", keystore.ErrInvalidPeerKey, 1+2*s.coordSize, len(peer)))
	}
	in := tpm2.New2B(tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: peer[1 : 1+s.coordSize]},
		Y: tpm2.TPM2BECCParameter{Buffer: peer[1+s.coordSize:]},
	})
	key := blobKeyOf(ref)
	var z []byte
	err = b.do(ctx, "ecdh", func() error {
		obj, err := b.loaded(bl, key)
		if err != nil {
			return err
		}
		auth := b.encSession(tpm2.AESEncryption(128, tpm2.EncryptOut))
		if bl.rev != nil {
			sess, done, err := b.revSession(*bl.rev)
			if err != nil {
				return err
			}
			defer done()
			auth = sess
		}
		rsp, err := tpm2.ECDHZGen{
			KeyHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: auth},
			InPoint:   in,
		}.Execute(b.tpm)
		if bl.rev != nil && isRC(err, tpm2.TPMRCPolicyFail) {
			// PolicyNV ran against an index of the same handle but
			// another Name: the key's index was removed once all its
			// keys were retired.
			return fmt.Errorf("TPM2_ECDH_ZGen: %w: %w", keystore.ErrRevoked, err)
		}
		if isRC(err, tpm2.TPMRCECCPoint, tpm2.TPMRCNoResult) {
			return fmt.Errorf("TPM2_ECDH_ZGen: %w: %w", keystore.ErrInvalidPeerKey, err)
		}
		if err != nil {
			return cmdErr("TPM2_ECDH_ZGen", err)
		}
		pt, err := rsp.OutPoint.Contents()
		if err != nil {
			return fmt.Errorf("TPM2_ECDH_ZGen: %w", err)
		}
		z, err = leftPad(pt.X.Buffer, s.coordSize)
		return err
	})
	return z, err
}

// Destroy flushes the key if it is loaded. Nothing else is on the TPM: the
// keystore erases the blob, and without it the key cannot be used again.
//
// A key bound to a revocation bit has its bit set first: that is what makes
// every copy of its blob useless.
func (b *Backend) Destroy(ctx context.Context, ref []byte) error {
	key := blobKeyOf(ref)
	var rev *revRef
	if len(ref) > 0 && ref[0] == blobKeyRevoke {
		r, _, err := decodeRev(ref[1:])
		if err != nil {
			return devErr("destroy", err)
		}
		rev = &r
	}
	return b.do(ctx, "destroy", func() error {
		if rev != nil {
			if err := b.revoke(*rev); err != nil {
				return err
			}
		}
		if obj, ok := b.lru.remove(key); ok {
			return b.flush(obj.Handle)
		}
		return nil
	})
}

// Check confirms from the public area that the key is an ECC key of the
// right curve, role and scheme for alg, generated inside a TPM and bound
// to it (fixedTPM, fixedParent, sensitiveDataOrigin), and then loads it:
// only the TPM whose SRK encrypted the private area can do that (otherwise
// TPM_RC_INTEGRITY, reported as ErrForeignBlob). The loaded key stays in
// the cache.
func (b *Backend) Check(ctx context.Context, ref []byte, alg keystore.Algorithm) error {
	_, bl, err := b.keyBlob(ref, alg)
	if err != nil {
		return devErr("check", err)
	}
	key := blobKeyOf(ref)
	err = b.do(ctx, "check", func() error {
		if bl.rev != nil {
			if err := b.checkRevoked(*bl.rev); err != nil {
				return err
			}
		}
		_, err := b.loaded(bl, key)
		return err
	})
	if errors.Is(err, ErrForeignBlob) {
		// At start-up this means the daemon was pointed at another TPM's
		// catalog; the keystore turns it into advice.
		return &keystore.ForeignKeyError{Device: "TPM", Code: "TPM_RC_INTEGRITY", Owner: "another TPM or storage root key", Err: err}
	}
	return err
}
