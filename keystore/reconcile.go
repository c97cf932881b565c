package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// EventKind names what the daemon did to keys on its own authority.
type EventKind string

const (
	// EventDestroyed: device keys destroyed without a caller asking: an
	// interrupted or aborted batch, or the device half of a retirement the
	// catalog had already committed.
	EventDestroyed EventKind = "destroyed"
	// EventQuarantined: a key the catalog and the device disagree on, set
	// aside for an administrator (a record marked missing, or a stray
	// device object).
	EventQuarantined EventKind = "quarantined"
	// EventRestored: a missing key found on the device again.
	EventRestored EventKind = "restored"
	// EventRetired: a missing key retired by an administrator's repair.
	EventRetired EventKind = "retired"
	// EventBound, EventAdopted: the catalog and the device were bound to
	// an installation, at the first start or by adoption.
	EventBound   EventKind = "bound"
	EventAdopted EventKind = "adopted"
	// EventRefused: Open refused a catalog and a device that do not belong
	// together (reported by the daemon, which also audits the refusal).
	EventRefused EventKind = "refused"
)

// Event is reported through Options.OnEvent for every key the daemon
// destroys or quarantines without a caller's request, so it can be audited.
type Event struct {
	Kind   EventKind
	KeyIDs []string
	Reason string
	// Err is set when the device refused a destruction (the sweep retries
	// it later).
	Err error
}

func (s *Store) event(kind EventKind, reason string, ids ...string) {
	if kind == EventAdopted {
		s.adopted = true
	}
	lvl := "info"
	switch kind {
	case EventQuarantined, EventAdopted:
		lvl = "warn"
	}
	args := []any{"event", string(kind), "reason", reason, "keys", len(ids)}
	if len(ids) <= 20 {
		args = append(args, "key_ids", ids)
	}
	if lvl == "warn" {
		s.log.Warn("keystore: "+string(kind), args...)
	} else {
		s.log.Info("keystore: "+string(kind), args...)
	}
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(Event{Kind: kind, KeyIDs: ids, Reason: reason})
	}
}

// Stray is a device object the catalog cannot account for. It is left in
// place, and listed, until an administrator destroys it.
type Stray struct {
	ID  string
	Ref []byte
	Why string
}

// strays is the last list of stray objects, from start-up or repair, and
// of the keys start-up found missing.
type strays struct {
	mu      sync.Mutex
	list    []Stray
	missing []string
}

// Missing returns the ids of the keys still missing since start-up. Keys
// become missing only at start-up, so the list is kept from there and
// checked against the catalog, which a delete or a repair may have changed.
func (s *Store) Missing() ([]string, error) {
	s.strays.mu.Lock()
	ids := slices.Clone(s.strays.missing)
	s.strays.mu.Unlock()
	out := ids[:0]
	for _, id := range ids {
		r, err := s.cat.get(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if r.State == StateMissing {
			out = append(out, id)
		}
	}
	return out, nil
}

// Strays returns the stray device objects found by the last start-up or
// repair.
func (s *Store) Strays() []Stray {
	s.strays.mu.Lock()
	defer s.strays.mu.Unlock()
	return slices.Clone(s.strays.list)
}

// whyMissingLegacy is the reason older versions recorded when they retired
// an active key whose device object they did not find. On another token
// that was wrong, so such a record's object, found again, is not destroyed.
const whyMissingLegacy = "missing from the device at start-up"

// reconcile brings catalog and device back to "a device key is live iff its
// record is active" after a crash, destroying only what is provably safe:
// objects of journalled batches that never committed, and objects whose
// records the catalog has already retired. Everything else it quarantines.
func (s *Store) reconcile(ctx context.Context) error {
	jrnl, err := s.cat.journal()
	if err != nil {
		return err
	}
	lister, ok := s.be.(Lister)
	if !ok {
		// Nothing outlives an uncommitted batch on such a device: its keys
		// were blobs that only the catalog would have kept.
		if err := s.dropJournal(jrnl, nil); err != nil {
			return err
		}
		if err := s.checkSealed(ctx); err != nil {
			return err
		}
		return s.checkHardware(ctx, nil)
	}
	t0 := time.Now()
	dev, err := lister.List(ctx)
	if err != nil {
		return &DeviceError{Op: "list keys", Err: err}
	}
	listTook := time.Since(t0)
	onDevice := map[string]DeviceKey{}
	var interrupted, retired, restored []string
	var found []Stray
	keep := map[string]bool{} // journal entries whose destruction failed
	for _, dk := range dev {
		onDevice[dk.ID] = dk
		r, err := s.cat.get(dk.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			if jid, ok := jrnl[dk.ID]; ok {
				if err := s.be.Destroy(ctx, dk.Ref); err != nil {
					s.log.Warn("could not destroy a key of an interrupted batch; retrying at the next start", "key", dk.ID, "err", err)
					keep[jid] = true
					continue
				}
				interrupted = append(interrupted, dk.ID)
				continue
			}
			found = append(found, Stray{ID: dk.ID, Ref: dk.Ref, Why: "not in the catalog"})
		case err != nil:
			return err
		case r.State == StateActive:
		case r.State == StateMissing:
			restored = append(restored, dk.ID)
		case r.RetiredWhy == whyMissingLegacy:
			found = append(found, Stray{ID: dk.ID, Ref: dk.Ref, Why: "the catalog marked it destroyed because an earlier start did not find it"})
		default:
			// The catalog committed the retirement (a delete or a consumed
			// init key); the device call after it did not happen.
			if err := s.be.Destroy(ctx, dk.Ref); err != nil {
				s.log.Warn("could not finish retiring a key; retrying at the next start", "key", dk.ID, "err", err)
				continue
			}
			retired = append(retired, dk.ID)
		}
	}
	if len(interrupted) > 0 {
		s.event(EventDestroyed, "interrupted batch: created on the device after the catalog's last commit", interrupted...)
	}
	if len(retired) > 0 {
		s.event(EventDestroyed, "retirement interrupted: the catalog had already retired the key", retired...)
	}
	if err := s.dropJournal(jrnl, keep); err != nil {
		return err
	}
	for _, st := range found {
		s.event(EventQuarantined, "stray device key ("+st.Why+"); left in place, destroy with repair after checking", st.ID)
	}
	s.strays.mu.Lock()
	s.strays.list = found
	s.strays.mu.Unlock()
	if len(restored) > 0 {
		if err := s.setState(restored, StateMissing, StateActive); err != nil {
			return err
		}
		s.event(EventRestored, "missing key found on the device again", restored...)
	}
	if err := s.checkSealed(ctx); err != nil {
		return err
	}
	if err := s.checkHardware(ctx, onDevice); err != nil {
		return err
	}
	s.log.Info("catalog reconciled", "device_keys", len(dev), "destroyed_interrupted", len(interrupted), "destroyed_retired", len(retired),
		"strays", len(found), "list_took", listTook.Round(time.Millisecond))
	return nil
}

func (s *Store) dropJournal(jrnl map[string]string, keep map[string]bool) error {
	var jids []string
	for _, jid := range jrnl {
		if !keep[jid] && !slices.Contains(jids, jid) {
			jids = append(jids, jid)
		}
	}
	return s.cat.journalDrop(jids)
}

// setState moves records from one state to another.
func (s *Store) setState(ids []string, from, to State) error {
	for _, id := range ids {
		_, err := s.cat.update(id, func(r *Record) error {
			if r.State == from {
				r.State = to
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// checkHardware quarantines active hardware records whose device key is
// missing (when onDevice says what the device has, or when the device's
// identity was just adopted) as missing, and has the Checker confirm the
// others: from what the listing read where it offers that (one device
// pass for all keys), else one device call per key.
func (s *Store) checkHardware(ctx context.Context, onDevice map[string]DeviceKey) error {
	t0 := time.Now()
	var lost, missing []string
	var recheck []checkEntry
	c, _ := s.be.(Checker)
	checkOne := func(r checkEntry) error {
		if f := onDevice[r.ID].Check; f != nil {
			return f(r.Algorithm)
		}
		return c.Check(ctx, r.DeviceRef, r.Algorithm)
	}
	// Two walks of the index (idxCheck), which holds what the checks need,
	// instead of a list of every key to check: on a catalog of a million
	// hardware keys that list alone was hundreds of MiB of heap for the
	// whole start. The first finds what changes state, the second checks
	// what is active after those changes; both keep only the few keys that
	// need something done.
	toCheck := 0
	err := s.cat.checkedAtStartRecords(func(r checkEntry) error {
		if r.State == StateMissing {
			if onDevice == nil && r.Protection == ProtectionHardware && len(r.DeviceRef) > 0 {
				// No listing: only loading the key tells whether it is back
				// (a TPM adopted by mistake, then the right one again).
				recheck = append(recheck, r)
				return nil
			}
			missing = append(missing, r.ID)
		}
		if r.State != StateActive || r.Protection != ProtectionHardware {
			return nil
		}
		if _, ok := onDevice[r.ID]; onDevice != nil && !ok {
			lost = append(lost, r.ID)
			return nil
		}
		// Keys made under another identity do not load on an adopted
		// device; they are quarantined, not a reason to refuse it.
		if s.adoptedIdentity && c != nil && checkOne(r) != nil {
			lost = append(lost, r.ID)
			return nil
		}
		toCheck++
		return nil
	})
	if err != nil {
		return err
	}
	if len(lost) > 0 {
		if err := s.setState(lost, StateActive, StateMissing); err != nil {
			return err
		}
		s.event(EventQuarantined, "catalog key not found on the device; marked missing, retire with repair after checking", lost...)
	}
	var restored []string
	for _, r := range recheck {
		if c != nil && c.Check(ctx, r.DeviceRef, r.Algorithm) == nil {
			restored = append(restored, r.ID)
		} else {
			missing = append(missing, r.ID)
		}
	}
	if len(restored) > 0 {
		if err := s.setState(restored, StateMissing, StateActive); err != nil {
			return err
		}
		s.event(EventRestored, "missing key usable on the device again", restored...)
	}
	s.strays.mu.Lock()
	s.strays.missing = append(missing, lost...)
	s.strays.mu.Unlock()
	var revoked []string
	cause := map[string]error{}
	checked := 0
	if c != nil {
		// The keys just restored passed their check above; the lost ones
		// are missing now and not active.
		skip := make(map[string]bool, len(restored))
		for _, id := range restored {
			skip[id] = true
		}
		progress := newProgress(s, "hardware keys checked so far", toCheck)
		err := s.cat.checkedAtStartRecords(func(r checkEntry) error {
			if r.State != StateActive || r.Protection != ProtectionHardware || skip[r.ID] {
				return nil
			}
			progress.at(checked)
			checked++
			if err := checkOne(r); err != nil {
				if errors.Is(err, ErrRevoked) {
					revoked = append(revoked, r.ID)
					cause[r.ID] = err
					return nil
				}
				var fe *ForeignKeyError
				if errors.As(err, &fe) {
					return fmt.Errorf("key %s's %w; use the state directory that %s was set up with", r.ID, fe, fe.Device)
				}
				return fmt.Errorf("hardware key %q failed its start-up check: %w", r.ID, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := s.retireRevoked(revoked, cause); err != nil {
		return err
	}
	if toCheck > 0 || len(lost) > 0 {
		s.log.Info("hardware keys checked", "checked", toCheck, "missing", len(lost), "revoked", len(revoked), "took", time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// progress logs how far a long start-up step has come, every
// progressEvery, so that a slow start is seen to be moving.
type progress struct {
	s     *Store
	msg   string
	total int
	next  time.Time
}

const progressEvery = 5 * time.Second

func newProgress(s *Store, msg string, total int) *progress {
	return &progress{s: s, msg: msg, total: total, next: time.Now().Add(progressEvery)}
}

// at reports that done of the total are done.
func (p *progress) at(done int) {
	if now := time.Now(); now.After(p.next) {
		p.s.log.Info(p.msg, "done", done, "of", p.total)
		p.next = now.Add(progressEvery)
	}
}

// RepairOptions say what an administrator's repair does.
type RepairOptions struct {
	// DestroyStrays destroys every device object the catalog cannot
	// account for (listed again now, not taken from start-up).
	DestroyStrays bool
	// RetireMissing marks every missing key destroyed.
	RetireMissing bool
}

// RepairResult lists what a repair did.
type RepairResult struct {
	DestroyedStrays []string
	RetiredMissing  []string
}

// Repair acts on quarantined keys after a human looked at them.
func (s *Store) Repair(ctx context.Context, o RepairOptions) (*RepairResult, error) {
	res := &RepairResult{}
	if o.DestroyStrays {
		found, err := s.scanStrays(ctx)
		if err != nil {
			return res, err
		}
		var errs []error
		left := []Stray{}
		for _, st := range found {
			if err := s.be.Destroy(ctx, st.Ref); err != nil {
				errs = append(errs, fmt.Errorf("destroy stray %s: %w", st.ID, err))
				left = append(left, st)
				continue
			}
			res.DestroyedStrays = append(res.DestroyedStrays, st.ID)
		}
		if len(res.DestroyedStrays) > 0 {
			s.event(EventDestroyed, "stray device keys destroyed by an administrator's repair", res.DestroyedStrays...)
		}
		s.strays.mu.Lock()
		s.strays.list = left
		s.strays.mu.Unlock()
		if err := errors.Join(errs...); err != nil {
			return res, &DeviceError{Op: "repair", Err: err}
		}
	}
	if o.RetireMissing {
		var ids []string
		err := s.cat.all(func(r *Record) error {
			if r.State == StateMissing {
				ids = append(ids, r.ID)
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		for _, id := range ids {
			unlock := s.locks.lock(id)
			_, err := s.cat.update(id, func(r *Record) error {
				if r.State != StateMissing {
					return nil
				}
				s.retire(r, StateDestroyed, "missing from the device; retired by an administrator's repair")
				res.RetiredMissing = append(res.RetiredMissing, id)
				return nil
			})
			unlock()
			if err != nil {
				return res, err
			}
		}
		if len(res.RetiredMissing) > 0 {
			s.event(EventRetired, "missing keys retired by an administrator's repair", res.RetiredMissing...)
		}
	}
	return res, nil
}

// scanStrays lists the device now and returns its objects that no catalog
// record accounts for and no batch in progress (the journal) is creating.
func (s *Store) scanStrays(ctx context.Context) ([]Stray, error) {
	lister, ok := s.be.(Lister)
	if !ok {
		return nil, nil
	}
	dev, err := lister.List(ctx)
	if err != nil {
		return nil, &DeviceError{Op: "list keys", Err: err}
	}
	// The journal is read after the listing: a batch that journalled its
	// ids before the listing saw its objects is still in it, or committed.
	jrnl, err := s.cat.journal()
	if err != nil {
		return nil, err
	}
	var out []Stray
	for _, dk := range dev {
		r, err := s.cat.get(dk.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			if _, ok := jrnl[dk.ID]; ok {
				continue
			}
			out = append(out, Stray{ID: dk.ID, Ref: dk.Ref, Why: "not in the catalog"})
		case err != nil:
			return nil, err
		case r.State == StateActive || r.State == StateMissing:
		case r.RetiredWhy == whyMissingLegacy:
			out = append(out, Stray{ID: dk.ID, Ref: dk.Ref, Why: "the catalog marked it destroyed because an earlier start did not find it"})
		}
		// Other retired records' objects are being destroyed by the
		// retirement that is in progress, or by the next start.
	}
	return out, nil
}

// checkSealed opens sealed and wrapped keys where the device may have
// changed under them: after an adoption, an active one the device cannot
// open is quarantined as missing rather than failing at its first use;
// and a missing one the device opens again is restored. A sealed key's
// plaintext is wiped at once; a wrapped key is tried with one derivation
// inside the device.
func (s *Store) checkSealed(ctx context.Context) error {
	_, wraps := s.be.(Wrapper)
	if s.sealer == nil && !wraps {
		return nil
	}
	blobKey := func(r *Record) bool {
		return r.Protection == ProtectionSealed || r.Protection == ProtectionWrapped
	}
	var recs []*Record
	var err error
	if s.adopted {
		// Rare (an operator adopted a device): worth one pass over every
		// record.
		err = s.cat.all(func(r *Record) error {
			if blobKey(r) && (r.State == StateActive || r.State == StateMissing) {
				recs = append(recs, r)
			}
			return nil
		})
	} else {
		// Otherwise only missing keys, which the check index holds: a
		// normal start reads no record here.
		var ids []string
		err = s.cat.checkedAtStartRecords(func(r checkEntry) error {
			if (r.Protection == ProtectionSealed || r.Protection == ProtectionWrapped) && r.State == StateMissing {
				ids = append(ids, r.ID)
			}
			return nil
		})
		for _, id := range ids {
			if err != nil {
				break
			}
			var r *Record
			if r, err = s.cat.get(id); err == nil {
				recs = append(recs, r)
			}
		}
	}
	if err != nil {
		return err
	}
	open := func(r *Record) error {
		if r.Protection == ProtectionWrapped {
			// The key's own public key is a valid peer: one derivation
			// proves the device unwraps it for this record.
			_, err := s.wrappedDH(ctx, r, r.PublicKey)
			return err
		}
		if s.sealer == nil {
			return fmt.Errorf("key %q is sealed but the device cannot unseal: %w", r.ID, ErrUnsupportedAlgorithm)
		}
		priv, err := s.sealer.Unseal(ctx, r.Sealed, sealAAD(r))
		clear(priv)
		return err
	}
	var lost, restored []string
	for _, r := range recs {
		err := open(r)
		switch {
		case err != nil && r.State == StateActive:
			lost = append(lost, r.ID)
		case err == nil && r.State == StateMissing:
			restored = append(restored, r.ID)
		}
	}
	if len(lost) > 0 {
		if err := s.setState(lost, StateActive, StateMissing); err != nil {
			return err
		}
		s.event(EventQuarantined, "sealed or wrapped key the adopted device cannot open; marked missing, retire with repair after checking", lost...)
	}
	if len(restored) > 0 {
		if err := s.setState(restored, StateMissing, StateActive); err != nil {
			return err
		}
		s.event(EventRestored, "missing sealed or wrapped key opens on the device again", restored...)
	}
	return nil
}
