package keystore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A sealed blob is the key, and copies of the catalog (backups, snapshots,
// freed bbolt pages) keep blobs after their keys are retired. So blobs are
// sealed under device keys that rotate in epochs: a new epoch key is made
// every EpochLength, the still-active sealed keys of older epochs are
// re-sealed under it, and then the older epoch keys are destroyed in the
// device. After that no copy of any catalog can open a blob of those epochs.
// See docs/security.md ("What destroyed means").

// Epocher is an optional Backend capability: sealing under device keys
// named by an epoch id the keystore chooses. Blobs name their epoch, so
// Unseal (of Sealer) finds the key by itself.
type Epocher interface {
	Unsealer
	// Epochs lists the epochs whose keys exist on the device.
	Epochs(ctx context.Context) ([]string, error)
	// NewEpoch creates the device key of epoch id. It fails with an error
	// wrapping ErrEpochBudget when the device has no room for another.
	NewEpoch(ctx context.Context, id string) error
	// DestroyEpoch destroys the epoch's device key. Every blob sealed in it
	// stops opening with an error wrapping ErrEpochDestroyed. Destroying an
	// epoch that is already gone is not an error.
	DestroyEpoch(ctx context.Context, id string) error
	// SealIn is Sealer.Seal under the epoch's key.
	SealIn(ctx context.Context, epoch string, plaintext, aad []byte) ([]byte, error)
}

// EpochSealChecker is an optional capability of an Epocher whose epoch
// keys come in kinds, one per sealing mechanism (a PKCS#11 token seals with
// AES-GCM, or behind a forwarder without AES-GCM with an HMAC key):
// CanSealIn says whether the epoch's key seals with the mechanism the
// device uses now. A current epoch made for another mechanism (the same
// token reached another way) is replaced at start-up.
type EpochSealChecker interface {
	CanSealIn(ctx context.Context, epoch string) (bool, error)
}

// EpochGenerator is an optional capability of an Epocher: hardware keys
// made in an epoch (under a TPM parent that the epoch's destruction
// evicts). They die with their epoch, but unlike sealed keys cannot move
// to a newer one: their epoch lasts until the last of them is retired.
type EpochGenerator interface {
	GenerateIn(ctx context.Context, epoch, id string, alg Algorithm) (ref, pub []byte, err error)
}

// A device may implement Epocher but not be able to keep epochs in some
// configuration (a TPM simulator loses its persistent objects at exit);
// it says so with EpochsSupported, and the keystore seals with Sealer.
func epochsSupported(be Backend) bool {
	s, ok := be.(interface{ EpochsSupported() bool })
	return !ok || s.EpochsSupported()
}

// Unsealer is the opening half of Sealer.
type Unsealer interface {
	Unseal(ctx context.Context, blob, aad []byte) ([]byte, error)
}

var (
	// ErrEpochDestroyed: the blob's epoch key is no longer on the device,
	// because every key of that epoch was retired (or moved to a newer
	// epoch). A record still active in the catalog but in such an epoch
	// comes from an old copy of the catalog.
	ErrEpochDestroyed = errors.New("its epoch key is not on the device: the key was retired and this is an old copy of the catalog, or the catalog belongs to another TPM or token")
	// ErrEpochBudget: the device has no room for another epoch key.
	ErrEpochBudget = errors.New("no room on the device for another epoch key")
)

// Events (Options.OnEvent) for epoch keys, which the keystore creates and
// destroys on its own authority. KeyIDs holds "epoch:" + the epoch id.
const (
	EventEpochStarted   EventKind = "epochStarted"
	EventEpochDestroyed EventKind = "epochDestroyed"
)

// DefaultEpochLength is how long one sealing epoch lasts when Options do
// not say.
const DefaultEpochLength = 24 * time.Hour

var keyEpochs = []byte("epochs")

// epochMeta is the catalog's memory of its epochs, in the meta bucket.
// Known lists every epoch this catalog created and has not seen destroyed:
// only those may be destroyed on the keystore's own authority; an epoch on
// the device that the catalog does not know may belong to another catalog.
type epochMeta struct {
	Current string    `json:"current"`
	Started time.Time `json:"started"`
	Known   []string  `json:"known"`
}

type epochs struct {
	dev Epocher
	// rotate serialises rotation and sweeping.
	rotate   sync.Mutex
	mu       sync.Mutex // guards the fields below
	meta     epochMeta
	pins     map[string]int // epochs used by uncommitted batches
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func newEpochID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func (c *catalog) loadEpochs() (epochMeta, error) {
	var m epochMeta
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyEpochs)
		if v == nil {
			return nil
		}
		return json.Unmarshal(v, &m)
	})
	if err != nil {
		return m, fmt.Errorf("catalog epochs: %w", err)
	}
	return m, nil
}

func (c *catalog) saveEpochs(m epochMeta) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return c.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyEpochs, v) })
}

func (s *Store) epochLength() time.Duration {
	if s.opts.EpochLength > 0 {
		return s.opts.EpochLength
	}
	return DefaultEpochLength
}

// initEpochs runs at Open: it forgets epochs the device no longer has,
// reports active keys whose epoch is gone, destroys known epochs no active
// key needs, and starts a new epoch when there is none or it is over.
func (s *Store) initEpochs(ctx context.Context) error {
	e := s.ep
	m, err := s.cat.loadEpochs()
	if err != nil {
		return err
	}
	onDev, err := e.dev.Epochs(ctx)
	if err != nil {
		return &DeviceError{Op: "list epochs", Err: err}
	}
	m.Known = slices.DeleteFunc(m.Known, func(id string) bool { return !slices.Contains(onDev, id) })
	if !slices.Contains(onDev, m.Current) {
		m.Current = ""
	}
	e.meta = m
	if err := s.cat.saveEpochs(m); err != nil {
		return err
	}
	stale := 0
	uses, err := s.cat.epochUses(false)
	if err != nil {
		return err
	}
	for _, u := range uses {
		if u.Epoch != "" && !slices.Contains(onDev, u.Epoch) {
			stale += u.Active
		}
	}
	if stale > 0 {
		s.log.Warn("active keys whose epoch key is no longer on the device: they cannot be used; the catalog is older than the device (restored from a copy?)", "keys", stale)
	}
	for _, id := range onDev {
		if !slices.Contains(m.Known, id) {
			s.log.Warn("epoch key on the device that this catalog did not create; left alone", "epoch", id)
		}
	}
	if c, ok := e.dev.(EpochSealChecker); ok && m.Current != "" {
		can, err := c.CanSealIn(ctx, m.Current)
		if err != nil {
			return &DeviceError{Op: "check epoch", Err: err}
		}
		if !can {
			s.log.Warn("the current sealing epoch's device key is of another sealing mechanism than the device uses now; starting a new epoch", "epoch", m.Current)
			return s.RotateEpoch(ctx)
		}
	}
	if m.Current == "" || s.opts.Now().Sub(m.Started) >= s.epochLength() {
		return s.RotateEpoch(ctx)
	}
	return s.sweepEpochs(ctx)
}

// pinEpoch returns the epoch new blobs are sealed in and pins it until
// the returned function is called, so that no sweep destroys it while a
// blob sealed in it is not yet in the catalog.
func (s *Store) pinEpoch() (string, func()) {
	e := s.ep
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.meta.Current
	e.pins[id]++
	var once sync.Once
	return id, func() {
		once.Do(func() {
			e.mu.Lock()
			if e.pins[id]--; e.pins[id] <= 0 {
				delete(e.pins, id)
			}
			e.mu.Unlock()
		})
	}
}

// RotateEpoch starts a new epoch now: it creates the device key, re-seals
// every active sealed key of older epochs under it and destroys the older
// epoch keys that no active key needs any more. A failure part-way leaves
// every key usable; the next rotation finishes the work.
func (s *Store) RotateEpoch(ctx context.Context) error {
	e := s.ep
	if e == nil {
		return fmt.Errorf("%s backend has no sealing epochs: %w", s.be.Info().Backend, ErrUnsupported)
	}
	e.rotate.Lock()
	defer e.rotate.Unlock()
	id := newEpochID()
	e.mu.Lock()
	m := e.meta
	m.Known = append(slices.Clone(m.Known), id)
	e.mu.Unlock()
	// Known before the device key exists: a crash in between leaves an
	// id the next start forgets, never a device key nobody may destroy.
	if err := s.cat.saveEpochs(m); err != nil {
		return err
	}
	if err := e.dev.NewEpoch(ctx, id); err != nil {
		if errors.Is(err, ErrEpochBudget) && m.Current != "" {
			s.log.Warn("could not start a new sealing epoch; the current one goes on", "epoch", m.Current, "err", err)
			return nil
		}
		return &DeviceError{Op: "create epoch key", Err: err}
	}
	m.Current, m.Started = id, s.opts.Now().UTC()
	if err := s.cat.saveEpochs(m); err != nil {
		return err
	}
	e.mu.Lock()
	e.meta = m
	e.mu.Unlock()
	s.event(EventEpochStarted, "new sealing epoch", "epoch:"+id)
	if err := s.migrateSealed(ctx, id); err != nil {
		return err
	}
	return s.sweepLocked(ctx)
}

// migrateSealed re-seals every active sealed key outside epoch cur under
// it, and re-wraps every wrapped one. Keys from before epochs (no epoch) move too, and from then on have
// the same guarantee.
func (s *Store) migrateSealed(ctx context.Context, cur string) error {
	// Candidates from the epoch index; reseal reads each record and moves
	// only live sealed or wrapped ones (a TPM hardware key cannot move).
	uses, err := s.cat.epochUses(true)
	if err != nil {
		return err
	}
	moved := 0
	for _, id := range otherEpochs(uses, cur) {
		if err := s.reseal(ctx, id, cur); err != nil {
			if errors.Is(err, ErrEpochDestroyed) {
				continue // nothing to move: see initEpochs' warning
			}
			return fmt.Errorf("move key %q to epoch %s: %w", id, cur, err)
		}
		moved++
	}
	if moved > 0 {
		s.log.Info("sealed keys moved to the new epoch", "epoch", cur, "keys", moved)
	}
	return nil
}

// reseal moves one key under its lock, taken exclusively: operations
// using the key finish first. Retiring calls release their locks before
// they rotate or sweep (epochRetired), so waiting here cannot deadlock.
func (s *Store) reseal(ctx context.Context, id, cur string) error {
	unlock := s.locks.lock(id)
	defer unlock()
	r, err := s.cat.get(id)
	if err != nil || !r.Live() || r.Epoch == cur {
		return err
	}
	var blob []byte
	if r.Protection == ProtectionWrapped {
		if blob, err = s.rewrap(ctx, r, cur); err != nil {
			return err
		}
	} else {
		priv, err := s.sealer.Unseal(ctx, r.Sealed, sealAAD(r))
		if err != nil {
			return &DeviceError{Op: "unseal key " + id, Err: err}
		}
		blob, err = s.ep.dev.SealIn(ctx, cur, priv, sealAAD(r))
		clear(priv)
		if err != nil {
			return &DeviceError{Op: "seal key " + id, Err: err}
		}
	}
	old := r.Sealed
	_, err = s.cat.update(id, func(r *Record) error {
		if !r.Live() || string(r.Sealed) != string(old) {
			return errMoved
		}
		r.Sealed, r.Epoch = blob, cur
		return nil
	})
	if errors.Is(err, errMoved) {
		return nil
	}
	return err
}

var errMoved = errors.New("record changed meanwhile")

// sweepEpochs destroys every epoch this catalog created that is not the
// current one, has no active key and no blob waiting for a commit.
func (s *Store) sweepEpochs(ctx context.Context) error {
	s.ep.rotate.Lock()
	defer s.ep.rotate.Unlock()
	return s.sweepLocked(ctx)
}

func (s *Store) sweepLocked(ctx context.Context) error {
	e := s.ep
	needed := map[string]bool{}
	// A quarantined key (missing) may come back: its epoch is needed too.
	inUse, err := s.cat.epochsInUse()
	if err != nil {
		return err
	}
	for _, ep := range inUse {
		if ep != "" {
			needed[ep] = true
		}
	}
	e.mu.Lock()
	var drop []string
	for _, id := range e.meta.Known {
		if id != e.meta.Current && !needed[id] && e.pins[id] == 0 {
			drop = append(drop, id)
		}
	}
	e.mu.Unlock()
	for _, id := range drop {
		if err := e.dev.DestroyEpoch(ctx, id); err != nil {
			return &DeviceError{Op: "destroy epoch key " + id, Err: err}
		}
		e.mu.Lock()
		e.meta.Known = slices.DeleteFunc(slices.Clone(e.meta.Known), func(k string) bool { return k == id })
		m := e.meta
		e.mu.Unlock()
		if err := s.cat.saveEpochs(m); err != nil {
			return err
		}
		s.event(EventEpochDestroyed, "epoch key destroyed in the device: no active key needs it", "epoch:"+id)
	}
	return nil
}

// epochRetired is called after a key left the active state. With
// Options.EpochPerRetirement a retired sealed key of the current epoch
// starts a new one at once, so its blob is dead before the call returns;
// otherwise an older epoch that just lost its last key is destroyed.
func (s *Store) epochRetired(ctx context.Context, r *Record) {
	if s.ep == nil || r.Epoch == "" {
		return
	}
	s.ep.mu.Lock()
	cur := s.ep.meta.Current
	s.ep.mu.Unlock()
	var err error
	if r.Epoch == cur && s.opts.EpochPerRetirement {
		err = s.RotateEpoch(context.WithoutCancel(ctx))
	} else if r.Epoch != cur {
		err = s.sweepEpochs(context.WithoutCancel(ctx))
	}
	if err != nil {
		// The key is retired in the catalog; its epoch goes at the next
		// rotation or start.
		s.log.Warn("could not destroy the retired key's epoch yet", "key", r.ID, "epoch", r.Epoch, "err", err)
	}
}

// runEpochs rotates when the current epoch is over. The check runs four
// times per epoch, so an epoch lasts at most 1.25 × EpochLength.
func (s *Store) runEpochs() {
	e := s.ep
	defer close(e.done)
	t := time.NewTicker(s.epochLength() / 4)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		e.mu.Lock()
		over := s.opts.Now().Sub(e.meta.Started) >= s.epochLength()
		e.mu.Unlock()
		if !over {
			continue
		}
		if err := s.guarded("rotate sealing epoch", func() error { return s.RotateEpoch(context.Background()) }); err != nil {
			s.log.Error("sealing epoch rotation failed; retrying later", "err", err)
		}
	}
}

// Epoch reports the current sealing epoch ("" when the device has none).
func (s *Store) Epoch() string {
	if s.ep == nil {
		return ""
	}
	s.ep.mu.Lock()
	defer s.ep.mu.Unlock()
	return s.ep.meta.Current
}

// otherEpochs lists the ids of keys outside epoch cur, sealed-before-epochs
// ones included.
func otherEpochs(uses []epochUse, cur string) []string {
	var ids []string
	for _, u := range uses {
		if u.Epoch != cur {
			ids = append(ids, u.IDs...)
		}
	}
	return ids
}
