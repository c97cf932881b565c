package keystore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Options configure a Store.
type Options struct {
	// MinProtection refuses to create keys of a role below a level, e.g.
	// {RoleSignature: ProtectionHardware} to forbid sealed signature keys.
	MinProtection map[Role]Protection
	// GenerateParallelism bounds concurrent device key generations within
	// one batch; 0 means 4.
	GenerateParallelism int
	Logger              *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DestroyTimeout bounds one device destruction, which runs detached
	// from the request that caused it; 0 means DefaultDestroyTimeout.
	DestroyTimeout time.Duration
	// AdoptDevice lets Open bind a catalog and a device that carry no
	// common installation id (a new catalog on a device of an existing
	// installation, or a catalog on a device without a marker). It never
	// overrides two different installation ids.
	AdoptDevice bool
	// OnEvent receives every destruction and quarantine the store does on
	// its own authority (start-up reconciliation, aborted batches, repair),
	// for the audit log. It must not call back into the store.
	OnEvent func(Event)
	// EpochLength is how long one sealing epoch lasts on a device with
	// epochs (Epocher); 0 means DefaultEpochLength. A retired sealed key
	// stays recoverable from an old copy of the catalog until its epoch
	// ends: at most 1.25 × EpochLength.
	EpochLength time.Duration
	// EpochPerRetirement starts a new epoch whenever a sealed key of the
	// current epoch is retired, before the retiring call returns: no window
	// at all, at the cost of re-sealing every active sealed key each time.
	EpochPerRetirement bool
	// HPKEProtection is the operator's choice of protection for new
	// key-agreement keys (init and leaf encryption keys), per algorithm;
	// Open refuses a level the device cannot give. Algorithms not named
	// get wrapped where the device can wrap them (Wrapper), else hardware
	// where it computes them, else sealed.
	HPKEProtection map[Algorithm]Protection
}

// Store is the device-neutral key store: the catalog, the lifecycle of
// every key and the policy on protection levels. See docs/design.md for the
// consistency protocol between catalog and device; in short, a device key is
// live if and only if its catalog record is active, creation commits to the
// catalog after the device (behind a journal entry written before it),
// retirement commits to the catalog before the device, and Open finishes
// what a crash left in between where that is provably safe and quarantines
// the rest (see reconcile.go).
type Store struct {
	cat    *catalog
	path   string
	be     Backend
	sealer Unsealer
	// sealErr is why the device's sealing failed its probe; sealed keys
	// are then unavailable rather than promised.
	sealErr error
	seal    Sealer  // a device without epochs
	ep      *epochs // a device with epochs
	hw      map[Algorithm]bool
	hpke    map[Algorithm]hpkeChoice // see chooseHPKE
	opts    Options
	log     *slog.Logger
	locks   keyLocks
	life    lifecycle
	strays  strays

	installation    string
	adopted         bool // a device was adopted at this start
	adoptedIdentity bool // the device's identity was adopted at this start
}

// Open opens (or creates) the catalog at path, checks that it and the
// device belong to the same installation (binding them at the first start),
// reconciles them and checks every hardware key. A refused binding wraps
// ErrBinding and changes nothing.
func Open(ctx context.Context, path string, be Backend, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.GenerateParallelism <= 0 {
		opts.GenerateParallelism = 4
	}
	for role, p := range opts.MinProtection {
		if !role.Valid() || p.Rank() == 0 {
			return nil, fmt.Errorf("policy: minimum protection %q for role %q: %w", p, role, ErrInvalidArgument)
		}
	}
	if f, ok := be.(StartupFinisher); ok {
		defer f.StartupDone()
	}
	_, statErr := os.Stat(path)
	isNew := errors.Is(statErr, fs.ErrNotExist)
	cat, err := openCatalog(path)
	if err != nil {
		return nil, err
	}
	s := &Store{cat: cat, path: path, be: be, opts: opts, log: opts.Logger, hw: map[Algorithm]bool{}}
	if ep, ok := be.(Epocher); ok && epochsSupported(be) {
		s.sealer = ep
		s.ep = &epochs{dev: ep, pins: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	} else if se, ok := be.(Sealer); ok {
		s.sealer, s.seal = se, se
	}
	// A device that failed its sealing probe offers no epochs (so no
	// sealer); the probe's reason is kept for GetInfo.
	if sc, ok := be.(SealChecker); ok {
		s.sealErr = sc.SealError()
	}
	for _, a := range be.Algorithms() {
		s.hw[a] = true
	}
	if err := s.chooseHPKE(); err != nil {
		cat.close()
		if isNew {
			os.Remove(path)
		}
		return nil, err
	}
	if err := s.bind(ctx); err != nil {
		cat.close()
		if isNew {
			// A refused start leaves no trace, not even an empty catalog
			// at the wrong path.
			os.Remove(path)
		}
		return nil, err
	}
	if err := s.reconcile(ctx); err != nil {
		cat.close()
		return nil, err
	}
	if err := s.revocations(ctx); err != nil {
		cat.close()
		return nil, err
	}
	if s.ep != nil {
		if err := s.initEpochs(ctx); err != nil {
			cat.close()
			return nil, fmt.Errorf("sealing epochs: %w", err)
		}
		go s.runEpochs()
	}
	return s, nil
}

// Close shuts the store down (see Shutdown), retries the device
// destructions that failed and closes the catalog. Its error says what is
// left on the device for the next start to remove. Callers must have
// finished every operation; the Backend belongs to the caller and must
// still be open.
func (s *Store) Close() error {
	if s.ep != nil {
		s.ep.stopOnce.Do(func() { close(s.ep.stop) })
		<-s.ep.done
	}
	left := s.settle()
	return errors.Join(left, s.cat.close())
}

// Device describes the backend.
func (s *Store) Device() DeviceInfo { return s.be.Info() }

// Protection reports the level a new key of alg gets on this device, before
// policy: hardware where the device computes the algorithm, sealed where it
// can at least seal, else ErrUnsupportedAlgorithm.
func (s *Store) Protection(alg Algorithm) (Protection, error) {
	if c, ok := s.hpke[alg]; ok {
		return c.p, nil
	}
	switch {
	case s.hw[alg]:
		return ProtectionHardware, nil
	case s.sealer != nil && s.sealErr == nil && alg.Valid():
		return ProtectionSealed, nil
	}
	return "", fmt.Errorf("%s: %w", alg, ErrUnsupportedAlgorithm)
}

// ProtectionFor is Protection with the policy for role applied: a level
// below the role's minimum is refused with ErrPolicy.
func (s *Store) ProtectionFor(role Role, alg Algorithm) (Protection, error) {
	p, err := s.Protection(alg)
	if err != nil {
		return "", err
	}
	min, ok := s.opts.MinProtection[role]
	if c := s.hpke[alg]; ok && p.Rank() < min.Rank() && !c.explicit && s.hw[alg] {
		// Wrapped is only the default: the policy asks for more, and the
		// device can give it.
		p = ProtectionHardware
	}
	if ok && p.Rank() < min.Rank() {
		return "", fmt.Errorf("%s keys for role %s would be %s, policy requires %s: %w", alg, role, p, min, ErrPolicy)
	}
	return p, nil
}

// newID returns a catalog id that sorts by creation time: 48 bits of
// milliseconds and 80 random bits, hex encoded.
func (s *Store) newID() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(s.opts.Now().UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// Get returns a key's record.
func (s *Store) Get(id string) (*Record, error) { return s.cat.get(id) }

// ByKeyPackageRef returns the init key made for a KeyPackage.
func (s *Store) ByKeyPackageRef(ref []byte) (*Record, error) { return s.cat.byKeyPackageRef(ref) }

// List returns up to limit records matching f with ids after the given one,
// and the id to pass as after for the next page ("" when done).
func (s *Store) List(f Filter, after string, limit int) ([]*Record, string, error) {
	return s.cat.list(f, after, limit)
}

// Count returns how many records match f and keep (nil keeps all). It
// reads every record: for tools and tests, not for request paths (see
// UnusedKeyPackages).
func (s *Store) Count(f Filter, keep func(*Record) bool) (int, error) {
	n := 0
	err := s.cat.all(func(r *Record) error {
		if f.match(r) && (keep == nil || keep(r)) {
			n++
		}
		return nil
	})
	return n, err
}

// KeySpec describes a key to create.
type KeySpec struct {
	Role      Role
	Suite     uint16
	Algorithm Algorithm
	Owner     string
}

// Batch creates keys that become usable together: nothing is in the
// catalog until Commit, and Abort (or a crash, via Open's reconciliation)
// removes the device keys it made. KeyPackage creation uses one batch for
// all its keys so that a failure leaves no half-built KeyPackages. The ids
// of its keys are journalled before the device makes them (journal.go).
type Batch struct {
	s      *Store
	jid    string // journal entry
	mu     sync.Mutex
	recs   []*Record
	unpins []func() // epochs to keep until the records are committed
	done   bool
	// generated, if set, is called after each key Generate makes, from
	// the generating goroutines (see OnGenerated).
	generated func()
}

// OnGenerated sets f to be called after each key that later Generate calls
// make on the device, for progress reports. f runs on Generate's worker
// goroutines, possibly concurrently, and must be quick.
func (b *Batch) OnGenerated(f func()) { b.generated = f }

// NewBatch starts a batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s, jid: s.newID()} }

// Generate creates keys for specs, in parallel on the device, and returns
// their records (not yet committed) in the order of specs. On error the
// keys this call made are destroyed again.
//
// A batch still generating when the store shuts down stops, destroys what
// it made and returns ErrShuttingDown.
func (b *Batch) Generate(ctx context.Context, specs []KeySpec) ([]*Record, error) {
	s := b.s
	if s.life.done() {
		return nil, ErrShuttingDown
	}
	ctx, cancel := s.life.bind(ctx)
	defer cancel()
	prots := make([]Protection, len(specs))
	for i, sp := range specs {
		if !sp.Role.Valid() {
			return nil, fmt.Errorf("role %q: %w", sp.Role, ErrInvalidArgument)
		}
		if sp.Role == RoleSignature != sp.Algorithm.IsSigning() {
			return nil, fmt.Errorf("algorithm %s for role %s: %w", sp.Algorithm, sp.Role, ErrInvalidArgument)
		}
		p, err := s.ProtectionFor(sp.Role, sp.Algorithm)
		if err != nil {
			return nil, err
		}
		prots[i] = p
	}
	ids := make([]string, len(specs))
	for i := range ids {
		ids[i] = s.newID()
	}
	if err := s.cat.journalAdd(b.jid, ids); err != nil {
		return nil, fmt.Errorf("journal the batch: %w", err)
	}
	recs := make([]*Record, len(specs))
	unpins := make([]func(), len(specs))
	errs := make([]error, len(specs))
	sem := make(chan struct{}, s.opts.GenerateParallelism)
	var wg sync.WaitGroup
	for i, sp := range specs {
		if ctx.Err() != nil {
			errs[i] = ctx.Err()
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			defer s.RecoverTo("generate "+string(sp.Algorithm), &errs[i])
			recs[i], unpins[i], errs[i] = s.generate(ctx, ids[i], sp, prots[i])
			if errs[i] == nil && b.generated != nil {
				b.generated()
			}
		})
	}
	wg.Wait()
	if err := aggregate(errs, len(specs)); err != nil {
		var made []*Record
		for _, r := range recs {
			if r != nil {
				made = append(made, r)
			}
		}
		defer runAll(unpins)
		if s.life.done() {
			s.destroyBatch(ctx, b.jid, made, "batch aborted at shutdown")
			return nil, ErrShuttingDown
		}
		s.destroyBatch(ctx, b.jid, made, "batch generation failed")
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		s.destroyBatch(ctx, b.jid, recs, "batch already finished")
		runAll(unpins)
		return nil, errors.New("keystore: batch already finished")
	}
	b.recs = append(b.recs, recs...)
	b.unpins = append(b.unpins, unpins...)
	return recs, nil
}

func runAll(fs []func()) {
	for _, f := range fs {
		if f != nil {
			f()
		}
	}
}

func (s *Store) generate(ctx context.Context, id string, sp KeySpec, p Protection) (rec *Record, unpin func(), err error) {
	r := &Record{
		ID: id, Role: sp.Role, Suite: sp.Suite, Algorithm: sp.Algorithm,
		Protection: p, Owner: sp.Owner, State: StateActive, CreatedAt: s.opts.Now().UTC(),
	}
	switch p {
	case ProtectionHardware:
		var ref, pub []byte
		if eg, ok := s.be.(EpochGenerator); ok && s.ep != nil {
			r.Epoch, unpin = s.pinEpoch()
			ref, pub, err = eg.GenerateIn(ctx, r.Epoch, r.ID, sp.Algorithm)
		} else {
			ref, pub, err = s.be.Generate(ctx, r.ID, sp.Algorithm)
		}
		if err != nil {
			if unpin != nil {
				unpin()
			}
			return nil, nil, deviceErr("generate "+string(sp.Algorithm), err)
		}
		r.DeviceRef, r.PublicKey = ref, pub
	case ProtectionSealed:
		priv, pub, err := softGenerate(sp.Algorithm)
		if err != nil {
			return nil, nil, err
		}
		defer clear(priv)
		var blob []byte
		if s.ep != nil {
			r.Epoch, unpin = s.pinEpoch()
			blob, err = s.ep.dev.SealIn(ctx, r.Epoch, priv, sealAAD(r))
		} else {
			blob, err = s.seal.Seal(ctx, priv, sealAAD(r))
		}
		if err != nil {
			if unpin != nil {
				unpin()
			}
			return nil, nil, deviceErr("seal", err)
		}
		r.Sealed, r.PublicKey = blob, pub
	case ProtectionWrapped:
		if unpin, err = s.generateWrapped(ctx, r); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("protection %s: %w", p, ErrUnsupportedAlgorithm)
	}
	return r, unpin, nil
}

// deviceErr wraps a device failure once: a backend's error that already
// is a DeviceError keeps its own operation name instead of gaining a
// second "device ...:" prefix.
func deviceErr(op string, err error) error {
	var de *DeviceError
	if errors.As(err, &de) {
		return err
	}
	return &DeviceError{Op: op, Err: err}
}

// sealAAD binds a sealed blob to its record, so a blob copied into another
// catalog entry does not open.
func sealAAD(r *Record) []byte {
	return []byte("mlskeyd sealed key v1\x00" + r.ID + "\x00" + string(r.Algorithm))
}

// Commit writes every record of the batch in one transaction. After it,
// the keys exist for callers; before it, for nobody.
func (b *Batch) Commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return errors.New("keystore: batch already finished")
	}
	b.done = true
	defer runAll(b.unpins)
	if len(b.recs) == 0 {
		return nil
	}
	if err := b.s.cat.commitBatch(b.jid, b.recs); err != nil {
		b.s.destroyBatch(context.Background(), b.jid, b.recs, "catalog commit failed")
		return fmt.Errorf("commit %d keys to the catalog: %w", len(b.recs), err)
	}
	return nil
}

// Abort destroys the device keys of an uncommitted batch. It is safe to
// call after Commit (then it does nothing), so callers can defer it.
func (b *Batch) Abort(ctx context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	if len(b.recs) > 0 {
		b.s.destroyBatch(ctx, b.jid, b.recs, "batch aborted")
	}
	runAll(b.unpins)
}

// destroyRef destroys the device key of a record just retired; ref is its
// device reference from before retire, which may have erased it.
func (s *Store) destroyRef(ctx context.Context, r *Record, ref []byte, why string) {
	c := *r
	c.DeviceRef = ref
	s.destroyDevice(ctx, []*Record{&c}, why)
}

// destroyDevice destroys the device keys of records the catalog no longer
// holds active (or never held). It runs detached from ctx's cancellation:
// see destroyContext. A key it cannot destroy is retried by Sweep and
// Close, and else by Open's reconciliation at the next start.
func (s *Store) destroyDevice(ctx context.Context, recs []*Record, why string) {
	dctx, cancel := s.destroyContext(ctx)
	defer cancel()
	for _, r := range recs {
		if r == nil || r.Protection != ProtectionHardware {
			continue
		}
		if err := s.be.Destroy(dctx, r.DeviceRef); err != nil {
			s.life.owe(r.ID, r.DeviceRef, why)
			s.log.Warn("could not destroy device key; will retry", "key", r.ID, "why", why, "err", err)
			continue
		}
		s.life.paid(r.ID)
		if len(r.Revocation) > 0 {
			// Destroy revoked it (a Revoker's Destroy does).
			s.life.markRevoked(r.ID)
		}
	}
}

// Create makes one key and commits it.
func (s *Store) Create(ctx context.Context, sp KeySpec) (*Record, error) {
	b := s.NewBatch()
	defer b.Abort(ctx)
	recs, err := b.Generate(ctx, []KeySpec{sp})
	if err != nil {
		return nil, err
	}
	if err := b.Commit(); err != nil {
		return nil, err
	}
	return recs[0], nil
}

// Delete destroys a key's private key and keeps its record as a tombstone.
// The catalog changes first: a crash before the device call leaves a device
// key that Open destroys, never an active record without a key. The device
// call does not depend on ctx's cancellation (see destroyDevice).
//
// A signature key that unused KeyPackages use (their init keys are active)
// is refused with an *InUseError unless cascade is set; with it, the init
// and leaf encryption keys of those KeyPackages are retired in the same
// catalog transaction. For an init key, cascade also retires its
// KeyPackage's leaf encryption key. Delete returns the key's record and
// the records retired with it.
//
// Delete holds the key's lock exclusively (and those of the keys it
// retires with it): operations holding it shared finish first.
func (s *Store) Delete(ctx context.Context, id string, cascade bool) (*Record, []*Record, error) {
	out, cascaded, err := s.delete(ctx, id, cascade)
	if err == nil {
		// After the locks are released: a rotation waits for key locks.
		for _, r := range append([]*Record{out}, cascaded...) {
			if strings.HasPrefix(r.RetiredWhy, "deleted") { // not consumed before
				s.epochRetired(ctx, r)
			}
		}
	}
	return out, cascaded, err
}

func (s *Store) delete(ctx context.Context, id string, cascade bool) (*Record, []*Record, error) {
	// groups maps each unused KeyPackage concerned to its init and leaf
	// key ("" if none is active). It is found once without locks, to know
	// what to lock, and again under them: every key is locked in one sorted
	// pass, so that two deletions of overlapping keys cannot deadlock, and
	// a KeyPackage committed in between makes the loop lock again.
	var groups map[string]string
	for {
		_, g, err := s.deletionSet(id, cascade)
		if err != nil {
			return nil, nil, err
		}
		locked := lockSet(id, g)
		unlock := s.locks.lockAll(locked)
		r, g2, err := s.deletionSet(id, cascade)
		if err != nil {
			unlock()
			return nil, nil, err
		}
		if !slices.Equal(lockSet(id, g2), locked) {
			unlock()
			continue
		}
		defer unlock()
		if r.Role == RoleSignature && len(g2) > 0 && !cascade {
			return nil, nil, &InUseError{ID: id, KeyPackages: len(g2)}
		}
		groups = g2
		break
	}

	refs := map[string][]byte{}
	var out *Record
	var cascaded []*Record
	err := s.cat.updateMany(func(get func(string) (*Record, error), put func(*Record) error) error {
		cascaded = nil
		retire := func(r *Record, why string) error {
			refs[r.ID] = r.DeviceRef
			s.retire(r, StateDestroyed, why)
			return put(r)
		}
		r, err := get(id)
		if err != nil {
			return err
		}
		if r.State == StateDestroyed {
			return kinded(ErrNotActive, "key %q is already destroyed", id)
		}
		refs[r.ID] = r.DeviceRef
		if r.State == StateActive || r.State == StateMissing {
			s.retire(r, StateDestroyed, "deleted")
		}
		r.State = StateDestroyed
		if err := put(r); err != nil {
			return err
		}
		out = r
		for initID, leafID := range groups {
			if initID != id {
				// Held locked since deletionSet found it active, so not
				// consumed since; a consumed init key's leaf key would
				// serve the group its Welcome joined.
				ir, err := get(initID)
				if err != nil {
					return err
				}
				if !ir.Live() {
					continue
				}
				if err := retire(ir, "deleted with key "+id); err != nil {
					return err
				}
				cascaded = append(cascaded, ir)
			}
			if leafID == "" {
				continue
			}
			lr, err := get(leafID)
			if err != nil {
				return err
			}
			if lr.Live() {
				if err := retire(lr, "deleted with key "+id); err != nil {
					return err
				}
				cascaded = append(cascaded, lr)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(cascaded, func(a, b *Record) int { return strings.Compare(a.ID, b.ID) })
	for _, c := range append([]*Record{out}, cascaded...) {
		s.destroyRef(ctx, c, refs[c.ID], "delete")
	}
	return out, cascaded, nil
}

// lockSet lists, sorted, the keys a deletion of id with groups locks.
func lockSet(id string, groups map[string]string) []string {
	ids := []string{id}
	for initID, leafID := range groups {
		ids = append(ids, initID)
		if leafID != "" {
			ids = append(ids, leafID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// deletionSet reads the key to delete and the unused KeyPackages its
// deletion concerns: for a signature key, every KeyPackage whose init key
// is active; for an init key with cascade, its own. It maps init key id to
// leaf key id.
func (s *Store) deletionSet(id string, cascade bool) (*Record, map[string]string, error) {
	var r *Record
	groups := map[string]string{}
	// One read transaction, and only the indexes of the KeyPackages
	// concerned: never a walk over every key.
	err := s.cat.db.View(func(tx *bolt.Tx) error {
		var err error
		if r, err = getRecord(tx, id); err != nil {
			return err
		}
		if r.State == StateDestroyed {
			return kinded(ErrNotActive, "key %q is already destroyed", id)
		}
		byInit := map[string][]byte{}
		switch {
		case r.Role == RoleSignature:
			byInit = keyPackagesOf(tx, r.ID)
		case r.Role == RoleInit && cascade && len(r.KeyPackageRef) > 0 && r.Live():
			byInit[r.ID] = r.KeyPackageRef
		}
		for initID, ref := range byInit {
			groups[initID] = ""
			leafID := leafOf(tx, ref)
			if leafID == "" {
				continue
			}
			lr, err := getRecord(tx, leafID)
			if err != nil {
				return err
			}
			if lr.Live() {
				groups[initID] = leafID
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return r, groups, nil
}

func (s *Store) retire(r *Record, st State, why string) {
	r.State = st
	r.RetiredAt = s.opts.Now().UTC()
	r.RetiredWhy = why
	// A sealed blob is the key: dropping it from the record is the first
	// step; destroying its epoch key (epochRetired, rotation) is what makes
	// copies of the blob useless. So is the reference of a device that
	// keeps no per-key state (see Lister). r.Epoch stays, so that sweeps
	// and operators can tell which epoch the key was in.
	r.Sealed = nil
	if rv, ok := s.be.(Revoker); ok && len(r.DeviceRef) > 0 && len(r.Revocation) == 0 {
		r.Revocation = rv.Revocation(r.DeviceRef)
	}
	if _, ok := s.be.(Lister); !ok {
		r.DeviceRef = nil
	}
}

// UseInitKey runs fn with the HPKE private key of an active init key and,
// if fn succeeds and the key is not last-resort, consumes the key: the
// catalog marks it consumed and the device key is destroyed. Calls for one
// key are serialised, so of concurrent calls exactly one succeeds; a failing
// fn changes nothing.
func (s *Store) UseInitKey(ctx context.Context, id string, fn func(hpkeKey any) error) (*Record, error) {
	r, err := s.useInitKey(ctx, id, fn)
	if err == nil && r.State == StateConsumed {
		// After the lock is released: a rotation waits for key locks.
		s.epochRetired(ctx, r)
	}
	return r, err
}

func (s *Store) useInitKey(ctx context.Context, id string, fn func(hpkeKey any) error) (*Record, error) {
	unlock := s.locks.lock(id)
	defer unlock()
	r, err := s.cat.get(id)
	if err != nil {
		return nil, err
	}
	if r.Role != RoleInit {
		return nil, kinded(ErrWrongRole, "key %q is %s key, not an init key", id, aRole(r.Role))
	}
	if r.State != StateActive {
		return nil, r.notActive("init key")
	}
	k, err := s.hpkeKey(ctx, r)
	if err != nil {
		return nil, err
	}
	if err := fn(k); err != nil {
		return nil, err
	}
	if r.LastResort {
		return r, nil
	}
	var ref []byte
	r, err = s.cat.update(id, func(r *Record) error {
		if r.State != StateActive {
			return r.notActive("init key")
		}
		ref = r.DeviceRef
		s.retire(r, StateConsumed, "welcome opened")
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The Welcome is open: the caller giving up now must not keep the
	// init key on the device (destroyDevice does not depend on ctx).
	s.destroyRef(ctx, r, ref, "consume")
	return r, nil
}

// Signer returns an active signature key as a crypto.Signer whose device
// calls use ctx.
func (s *Store) Signer(ctx context.Context, id string) (*Signer, error) {
	r, err := s.active(id, RoleSignature)
	if err != nil {
		return nil, err
	}
	return s.SignerFor(ctx, r)
}

// DecryptionKey returns an active leaf encryption key's HPKE private key:
// an ecdh.KeyExchanger, or for X448 a value with X448PublicKey and X448
// methods (crypto/ecdh has no X448).
func (s *Store) DecryptionKey(ctx context.Context, id string) (any, error) {
	r, err := s.active(id, RoleLeafEncryption)
	if err != nil {
		return nil, err
	}
	return s.hpkeKey(ctx, r)
}

// DecryptionKeyFor is DecryptionKey for a record the caller has already
// read and checked with Usable, sparing a second catalog read.
func (s *Store) DecryptionKeyFor(ctx context.Context, r *Record) (any, error) {
	return s.hpkeKey(ctx, r)
}

func (s *Store) active(id string, role Role) (*Record, error) {
	r, err := s.cat.get(id)
	if err != nil {
		return nil, err
	}
	return r, r.Usable(role)
}

// aRole is the role with its indefinite article: "an init", "a signature".
func aRole(r Role) string {
	if r == RoleInit {
		return "an " + string(r)
	}
	return "a " + string(r)
}

// Usable reports whether the key can serve as a key of role now: it must
// have that role (ErrWrongRole) and be active (ErrNotActive).
func (r *Record) Usable(role Role) error {
	if r.Role != role {
		return kinded(ErrWrongRole, "key %q is %s key, not %s key", r.ID, aRole(r.Role), aRole(role))
	}
	if r.State != StateActive {
		return r.notActive("key")
	}
	return nil
}

// notActive is the ErrNotActive of a record that is not active. A key
// start-up retired because the device had revoked it says so: the caller
// is then using a catalog older than the device, which "destroyed" alone
// does not explain.
func (r *Record) notActive(what string) error {
	if r.RevokedOnDevice() {
		return kinded(ErrNotActive, "%s %q is %s: %s", what, r.ID, r.State, r.RetiredWhy)
	}
	return kinded(ErrNotActive, "%s %q is %s", what, r.ID, r.State)
}

// keyLocks holds one read-write lock per key in use: operations that use a
// key take it shared, those that retire it (Delete, consuming an init key,
// Sweep) exclusively.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	sync.RWMutex
	refs int
}

func (l *keyLocks) get(id string) *keyLock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k := l.m[id]
	if k == nil {
		k = &keyLock{}
		l.m[id] = k
	}
	k.refs++
	return k
}

func (l *keyLocks) put(id string, k *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k.refs--; k.refs == 0 {
		delete(l.m, id)
	}
}

// lock takes id's lock exclusively.
func (l *keyLocks) lock(id string) (unlock func()) {
	k := l.get(id)
	k.Lock()
	return func() { k.Unlock(); l.put(id, k) }
}

// share takes id's lock shared.
func (l *keyLocks) share(id string) (unlock func()) {
	k := l.get(id)
	k.RLock()
	return func() { k.RUnlock(); l.put(id, k) }
}

// Attest returns the device's evidence for an active hardware key, bound
// to nonce. ErrUnsupported means the device cannot attest.
func (s *Store) Attest(ctx context.Context, id string, nonce []byte) (*Attestation, error) {
	at, ok := s.be.(Attester)
	if !ok {
		return nil, fmt.Errorf("%s backend: %w", s.be.Info().Backend, ErrUnsupported)
	}
	r, err := s.cat.get(id)
	if err != nil {
		return nil, err
	}
	if r.State != StateActive {
		return nil, r.notActive("key")
	}
	if r.Protection != ProtectionHardware {
		return nil, kinded(ErrNotActive, "key %q has protection %s; only hardware keys can be attested", id, r.Protection)
	}
	a, err := at.Attest(ctx, r.DeviceRef, r.Algorithm, nonce)
	if err != nil {
		return nil, &DeviceError{Op: "attest key " + id, Err: err}
	}
	return a, nil
}
