package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Sealing epochs (keystore.Epocher) on a TPM: each epoch is a storage key
// created under the SRK with TPM2_Create and made persistent with
// TPM2_EvictControl at a handle of our own range. Its private blob exists
// only in daemon memory for the few commands in between and is never
// written anywhere, so once the persistent object is evicted nothing can
// load it again, and no sealed blob created under it can be loaded either,
// from whatever copy of the catalog.
//
// Persistent handles are scarce: the specification guarantees only 7
// (TPM_PT_HR_PERSISTENT_MIN) for everyone, and the EK and SRK often take
// two of them. The daemon uses at most Config.EpochHandles (default 3) at
// 0x814D4C00 and up: normally one or two (the current epoch, and the last
// one until its keys have moved). When none is free the keystore keeps the
// current epoch, which lengthens the window, and says so in its log.

const (
	epochHandleBase     = tpm2.TPMHandle(0x814D4C00) // "ML"
	defaultEpochHandles = 3
	blobSealedEpoch     = 0x03 // 0x03 || len(epoch) || epoch || TPM2B_PUBLIC || TPM2B_PRIVATE
	maxEpochID          = 16
)

// epochPolicyPrefix marks our epoch parents: the authPolicy (which nobody
// can satisfy, and which is not needed: userWithAuth with an empty auth
// value) carries the prefix and the epoch id, so a restart finds them.
var epochPolicyPrefix = []byte("mlskeyd-epoch\x00\x00\x00")

func epochPolicy(id string) []byte {
	p := make([]byte, sha256.Size)
	copy(p, epochPolicyPrefix)
	copy(p[len(epochPolicyPrefix):], id)
	return p
}

func epochTemplate(id string) tpm2.TPMTPublic {
	t := tpm2.ECCSRKTemplate
	t.AuthPolicy = tpm2.TPM2BDigest{Buffer: epochPolicy(id)}
	return t
}

func checkEpochID(id string) error {
	if id == "" || len(id) > maxEpochID {
		return fmt.Errorf("%w: epoch id must be 1 to %d bytes", keystore.ErrInvalidArgument, maxEpochID)
	}
	for _, c := range []byte(id) {
		if c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: epoch id must be printable ASCII", keystore.ErrInvalidArgument)
		}
	}
	return nil
}

// EpochsSupported reports whether sealing epochs are used: not on the
// in-process simulator, which loses persistent objects when the process
// exits (development keys must survive restarts there).
func (b *Backend) EpochsSupported() bool { return !b.isSim }

// scanEpochs reads our handle range: it fills b.epochs and returns the
// handles taken by anything. Runs with the queue held.
func (b *Backend) scanEpochs() (map[tpm2.TPMHandle]bool, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(epochHandleBase), PropertyCount: uint32(b.epochMax)}.Execute(b.tpm)
	if err != nil {
		return nil, cmdErr("TPM2_GetCapability(persistent handles)", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability(persistent handles): %w", err)
	}
	taken := map[tpm2.TPMHandle]bool{}
	found := map[string]tpm2.NamedHandle{}
	for _, h := range hs.Handle {
		if h < epochHandleBase || h >= epochHandleBase+tpm2.TPMHandle(b.epochMax) {
			continue
		}
		taken[h] = true
		// Reading a persistent object takes a transient slot, which the
		// loaded keys may all hold.
		var pr *tpm2.ReadPublicResponse
		err := b.withObjectSlot(func() error {
			var err error
			pr, err = tpm2.ReadPublic{ObjectHandle: h}.Execute(b.tpm)
			return cmdErr(fmt.Sprintf("TPM2_ReadPublic(0x%08x)", uint32(h)), err)
		})
		if err != nil {
			return nil, err
		}
		area, err := pr.OutPublic.Contents()
		if err != nil {
			return nil, fmt.Errorf("TPM2_ReadPublic(0x%08x): %w", uint32(h), err)
		}
		pol := area.AuthPolicy.Buffer
		if len(pol) != sha256.Size || !bytes.HasPrefix(pol, epochPolicyPrefix) {
			continue // someone else's object; the handle stays unused
		}
		id := string(bytes.TrimRight(pol[len(epochPolicyPrefix):], "\x00"))
		a := area.ObjectAttributes
		if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.Decrypt || a.SignEncrypt {
			return nil, fmt.Errorf("%w: epoch parent 0x%08x (epoch %q): fixedTPM=%v fixedParent=%v sensitiveDataOrigin=%v restricted=%v decrypt=%v",
				ErrNotProtected, uint32(h), id, a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin, a.Restricted, a.Decrypt)
		}
		found[id] = tpm2.NamedHandle{Handle: h, Name: pr.Name}
	}
	b.epochs = found
	return taken, nil
}

// Epochs lists the epoch parents in our handle range. A parent that is not
// a restricted decryption key born in this TPM and bound to it fails the
// whole call, so the daemon does not start with it.
func (b *Backend) Epochs(ctx context.Context) ([]string, error) {
	var ids []string
	err := b.do(ctx, "list epochs", func() error {
		if _, err := b.scanEpochs(); err != nil {
			return err
		}
		for id := range b.epochs {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

// NewEpoch creates the epoch's parent and makes it persistent at a free
// handle of our range.
func (b *Backend) NewEpoch(ctx context.Context, id string) error {
	if err := checkEpochID(id); err != nil {
		return err
	}
	return b.do(ctx, "new epoch", func() error {
		taken, err := b.scanEpochs()
		if err != nil {
			return err
		}
		if _, ok := b.epochs[id]; ok {
			return fmt.Errorf("%w: epoch %q exists", keystore.ErrInvalidArgument, id)
		}
		h := epochHandleBase
		for ; h < epochHandleBase+tpm2.TPMHandle(b.epochMax); h++ {
			if !taken[h] {
				break
			}
		}
		if h == epochHandleBase+tpm2.TPMHandle(b.epochMax) {
			return fmt.Errorf("%w: all %d handles from 0x%08x are taken (tpm-epoch-handles)", keystore.ErrEpochBudget, b.epochMax, uint32(epochHandleBase))
		}
		var obj tpm2.NamedHandle
		err = b.withObjectSlot(func() error {
			rsp, err := tpm2.Create{ParentHandle: b.srkAuth(nil), InPublic: tpm2.New2B(epochTemplate(id))}.Execute(b.tpm)
			if err != nil {
				return cmdErr("TPM2_Create(epoch parent)", err)
			}
			lr, err := tpm2.Load{ParentHandle: b.srkAuth(nil), InPrivate: rsp.OutPrivate, InPublic: rsp.OutPublic}.Execute(b.tpm)
			if err != nil {
				return cmdErr("TPM2_Load(epoch parent)", err)
			}
			obj = tpm2.NamedHandle{Handle: lr.ObjectHandle, Name: lr.Name}
			return nil
		})
		if err != nil {
			return err
		}
		err = b.withObjectSlot(func() error {
			_, err := tpm2.EvictControl{
				Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				ObjectHandle:     &obj,
				PersistentHandle: h,
			}.Execute(b.tpm)
			return err
		})
		ferr := b.flush(obj.Handle)
		if err != nil {
			if isRC(err, tpm2.TPMRCNVSpace) {
				return fmt.Errorf("%w: %w", keystore.ErrEpochBudget, cmdErr("TPM2_EvictControl", err))
			}
			return cmdErr("TPM2_EvictControl", err)
		}
		b.epochs[id] = tpm2.NamedHandle{Handle: h, Name: obj.Name}
		return ferr
	})
}

// DestroyEpoch evicts the epoch's parent. Its blob was never stored, so
// every key sealed under it is gone.
func (b *Backend) DestroyEpoch(ctx context.Context, id string) error {
	return b.do(ctx, "destroy epoch", func() error {
		if _, err := b.scanEpochs(); err != nil {
			return err
		}
		p, ok := b.epochs[id]
		if !ok {
			return nil
		}
		err := b.withObjectSlot(func() error {
			_, err := tpm2.EvictControl{
				Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				ObjectHandle:     &p,
				PersistentHandle: p.Handle,
			}.Execute(b.tpm)
			return err
		})
		if err != nil {
			return cmdErr("TPM2_EvictControl(evict)", err)
		}
		delete(b.epochs, id)
		// Keys loaded under the parent stay loaded after it is evicted.
		var errs []error
		for _, e := range slices.Clone(b.lru.entries) {
			if e.epoch == id {
				b.lru.remove(e.key)
				errs = append(errs, b.flush(e.obj.Handle))
			}
		}
		return errors.Join(errs...)
	})
}

// epochParent returns the epoch's parent, reading the handle range again
// if it is not known. Runs with the queue held.
func (b *Backend) epochParent(id string) (tpm2.NamedHandle, error) {
	if p, ok := b.epochs[id]; ok {
		return p, nil
	}
	if _, err := b.scanEpochs(); err != nil {
		return tpm2.NamedHandle{}, err
	}
	if p, ok := b.epochs[id]; ok {
		return p, nil
	}
	return tpm2.NamedHandle{}, fmt.Errorf("epoch %q: %w", id, keystore.ErrEpochDestroyed)
}

// SealIn is Seal under the epoch's parent; the blob is 0x03 || len(epoch)
// || epoch || TPM2B_PUBLIC || TPM2B_PRIVATE.
func (b *Backend) SealIn(ctx context.Context, epoch string, plaintext, aad []byte) ([]byte, error) {
	if err := checkEpochID(epoch); err != nil {
		return nil, devErr("seal", err)
	}
	return b.seal(ctx, epoch, plaintext, aad)
}

// splitEpochBlob returns the epoch and the rest shaped as a blob of
// version v (0x01 or 0x02).
func splitEpochBlob(blob []byte, v byte) (string, []byte, error) {
	if len(blob) < 2 || int(blob[1]) == 0 || len(blob) < 2+int(blob[1]) {
		return "", nil, fmt.Errorf("%w: truncated epoch header", ErrBadBlob)
	}
	n := 2 + int(blob[1])
	epoch := string(blob[2:n])
	if err := checkEpochID(epoch); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	return epoch, append([]byte{v}, blob[n:]...), nil
}
