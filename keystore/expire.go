package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

const expiredWhy = "expired: KeyPackage not_after "

// Expired reports whether r was retired because its KeyPackage expired.
func Expired(r *Record) bool {
	return r.State == StateDestroyed && strings.HasPrefix(r.RetiredWhy, expiredWhy)
}

// expireBatch bounds the KeyPackages one pass of ExpireKeyPackages reads.
const expireBatch = 1000

// ExpireKeyPackages retires the init and leaf encryption keys of unused
// KeyPackages whose lifetime ended (not_after before now): no peer may
// accept such a KeyPackage (RFC 9420 §10.1), so its keys can only be
// stolen, never used. A last-resort KeyPackage is kept past its end until
// a newer last-resort KeyPackage of the same owner, suite and identity
// exists, so its owner is never left with none. Each key destroyed is
// reported to Options.OnEvent (EventDestroyed). It returns how many KeyPackages it
// retired. The expiry index is read, never every key.
func (s *Store) ExpireKeyPackages(ctx context.Context) (int, error) {
	now := s.opts.Now()
	n := 0
	// Kept last-resort KeyPackages stay in the index: skip past them.
	skip := map[string]bool{}
	var errs []error
	for {
		recs, err := s.cat.expiredInitKeys(now, expireBatch+len(skip))
		if err != nil {
			return n, err
		}
		progress := false
		for _, r := range recs {
			if skip[r.ID] {
				continue
			}
			if err := ctx.Err(); err != nil {
				return n, err
			}
			done, err := s.expireOne(ctx, r.ID, now)
			if err != nil {
				errs = append(errs, err)
			}
			if done {
				n++
			}
			skip[r.ID] = !done
			progress = true
		}
		if !progress || len(recs) < expireBatch+len(skip) {
			return n, errors.Join(errs...)
		}
	}
}

// expireOne retires one KeyPackage's keys under their locks, after
// checking again that it is unused and expired, and is not a last-resort
// KeyPackage without a successor.
func (s *Store) expireOne(ctx context.Context, initID string, now time.Time) (bool, error) {
	var leafID string
	err := s.cat.db.View(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, initID)
		if err != nil {
			return err
		}
		leafID = leafOf(tx, r.KeyPackageRef)
		return nil
	})
	if err != nil {
		return false, err
	}
	ids := []string{initID}
	if leafID != "" {
		ids = append(ids, leafID)
	}
	unlock := s.locks.lockAll(ids)
	defer unlock()
	var retired []*Record
	refs := map[string][]byte{}
	err = s.cat.db.Update(func(tx *bolt.Tx) error {
		retired = nil
		r, err := getRecord(tx, initID)
		if err != nil {
			return err
		}
		if !unusedKP(r) || r.NotAfter.IsZero() || !r.NotAfter.Before(now) {
			return nil // used, deleted or renewed meanwhile
		}
		if r.LastResort && !newerLastResort(tx, r) {
			return nil
		}
		why := expiredWhy + r.NotAfter.UTC().Format(time.RFC3339)
		for _, id := range ids {
			k, err := getRecord(tx, id)
			if err != nil {
				return err
			}
			if !k.Live() {
				continue
			}
			refs[k.ID] = k.DeviceRef
			s.retire(k, StateDestroyed, why)
			if err := putRecord(tx, k); err != nil {
				return err
			}
			retired = append(retired, k)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("expire KeyPackage of init key %s: %w", initID, err)
	}
	for _, k := range retired {
		dctx, cancel := s.destroyContext(ctx)
		var derr error
		if k.Protection == ProtectionHardware {
			if derr = s.be.Destroy(dctx, refs[k.ID]); derr != nil {
				s.life.owe(k.ID, refs[k.ID], k.RetiredWhy)
			}
		}
		cancel()
		if s.opts.OnEvent != nil {
			s.opts.OnEvent(Event{Kind: EventDestroyed, KeyIDs: []string{k.ID}, Reason: k.RetiredWhy, Err: derr})
		}
		s.log.Info("expired KeyPackage key destroyed", "key", k.ID, "role", k.Role, "err", derr)
	}
	return len(retired) > 0, nil
}
