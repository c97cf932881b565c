package keystore

import (
	"context"
	"errors"
	"fmt"
)

// Revoker is an optional Backend capability: per-key revocation on a device
// that keeps no per-key object (a TPM, whose key is a blob the catalog
// holds). Erasing the blob from the catalog does not erase its copies
// (backups, snapshots, freed pages); revoking the key on the device makes
// every copy useless at once. A key has a revocation when its reference
// says so (on a TPM: an ECDH key bound to an NV bit).
//
// Destroy of a key that has a revocation revokes it too.
//
// The catalog keeps a retired key's revocation (Record.Revocation), which
// is not secret, so that a crash between the catalog's commit and the
// device call is made good at the next start or sweep.
type Revoker interface {
	// Revocation returns what Revoke needs for the key ref, or nil when
	// the key has no revocation of its own.
	Revocation(ref []byte) []byte
	// Revoke makes the key unusable on the device for good. Revoking it
	// again, or a key whose revocation storage is gone, is not an error.
	Revoke(ctx context.Context, rev []byte) error
	// Reserve tells the device every revocation the catalog holds, active
	// or retired, so that it binds no new key to them, and the
	// installation they belong to, so that it hands out no revocation
	// another installation on the same device may hold. Open calls it
	// before any key is generated.
	Reserve(ctx context.Context, installation string, revs [][]byte) error
	// Reclaim frees the device storage whose every key is revoked and
	// describes each piece freed, for the audit log.
	Reclaim(ctx context.Context) ([]string, error)
	// RevocationNote says why new keys get no revocation of their own (a
	// budget exhausted, a device refusal), or "".
	RevocationNote() string
	// RevokesSignatureKeys reports whether new signature keys get a
	// revocation too (HPKE keys always do while the device can give one).
	RevokesSignatureKeys() bool
}

// ErrRevoked is wrapped by a Checker (and by operations) for a key the
// device has revoked: the catalog that still calls it active is older than
// the device.
var ErrRevoked = errors.New("the device has revoked the key")

// EventReclaimed: device storage used only by revoked keys was freed.
const EventReclaimed EventKind = "reclaimed"

// whyRevokedOnDevice is the retirement reason of an active record whose
// key the device had revoked at start-up.
const whyRevokedOnDevice = "retired on the device (revocation set); the catalog is older than the device"

// revocations runs at Open, after the start-up check: it revokes on the
// device what retired records still hold (a crash between the catalog's
// commit and the device call), reserves every revocation the catalog
// holds and frees what is fully revoked. A device that refuses is logged
// and left to the sweep: nothing here stops the start, and no key is
// generated on a revocation the catalog holds, since Reserve runs first.
func (s *Store) revocations(ctx context.Context) error {
	rv, ok := s.be.(Revoker)
	if !ok {
		return nil
	}
	// Active and missing hardware keys carry theirs in the reference
	// (idxCheck), retired ones in the record (idxRevoke): two indexes, not
	// every record.
	var all [][]byte
	err := s.cat.checkedAtStartRecords(func(r checkEntry) error {
		if r.Protection != ProtectionHardware {
			return nil
		}
		if rev := rv.Revocation(r.DeviceRef); rev != nil {
			all = append(all, rev)
		}
		return nil
	})
	if err == nil {
		err = s.cat.owedRevocations(func(_ string, rev []byte) error {
			all = append(all, rev)
			return nil
		})
	}
	if err != nil {
		return err
	}
	if err := rv.Reserve(ctx, s.installation, all); err != nil {
		return &DeviceError{Op: "reserve revocations", Err: err}
	}
	if err := s.settleRevocations(ctx); err != nil {
		s.log.Warn("could not revoke every retired key on the device; the sweep retries", "err", err)
	}
	return nil
}

// settleRevocations revokes on the device every retired record's
// revocation (idempotent: the device skips what is already revoked) and
// then frees the device storage that is fully revoked.
func (s *Store) settleRevocations(ctx context.Context) error {
	rv, ok := s.be.(Revoker)
	if !ok {
		return nil
	}
	type owed struct {
		id  string
		rev []byte
	}
	var todo []owed
	err := s.cat.owedRevocations(func(id string, rev []byte) error {
		if !s.life.isRevoked(id) {
			todo = append(todo, owed{id, rev})
		}
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range todo {
		if err := rv.Revoke(ctx, o.rev); err != nil {
			errs = append(errs, fmt.Errorf("revoke key %s: %w", o.id, err))
			continue
		}
		s.life.markRevoked(o.id)
	}
	freed, err := rv.Reclaim(ctx)
	for _, f := range freed {
		s.event(EventReclaimed, "device storage freed: "+f)
	}
	if err != nil {
		errs = append(errs, &DeviceError{Op: "reclaim revocations", Err: err})
	}
	return errors.Join(errs...)
}

// RevokedOnDevice reports whether start-up retired the record because the
// device had revoked its key (the catalog was older than the device).
func (r *Record) RevokedOnDevice() bool { return r.RetiredWhy == whyRevokedOnDevice }

// retireRevoked retires active records whose keys the device revoked: the
// device proves the key was retired by this installation, so this is an
// old catalog; the start goes on.
func (s *Store) retireRevoked(ids []string, cause map[string]error) error {
	for _, id := range ids {
		_, err := s.cat.update(id, func(r *Record) error {
			if r.State == StateActive {
				s.retire(r, StateDestroyed, whyRevokedOnDevice)
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.log.Warn("key retired: the device revoked it, so this catalog is older than the device (restored from a backup?)", "key", id, "err", cause[id])
	}
	if len(ids) > 0 {
		s.event(EventRetired, whyRevokedOnDevice, ids...)
	}
	return nil
}
