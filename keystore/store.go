package keystore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
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
}

// Store is the device-neutral key store: the catalog, the lifecycle of
// every key and the policy on protection levels. See docs/design.md for the
// consistency protocol between catalog and device; in short, a device key is
// live if and only if its catalog record is active, creation commits to the
// catalog after the device, retirement commits to the catalog before the
// device, and Open removes whatever a crash left in between.
type Store struct {
	cat    *catalog
	be     Backend
	sealer Sealer
	// sealErr is why the Sealer failed its probe; sealed keys are then
	// unavailable rather than promised.
	sealErr error
	hw      map[Algorithm]bool
	opts    Options
	log     *slog.Logger
	locks   keyLocks
}

// Open opens (or creates) the catalog at path, reconciles it with the
// device and checks every hardware key.
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
	cat, err := openCatalog(path)
	if err != nil {
		return nil, err
	}
	s := &Store{cat: cat, be: be, opts: opts, log: opts.Logger, hw: map[Algorithm]bool{}}
	s.sealer, _ = be.(Sealer)
	if sc, ok := be.(SealChecker); ok && s.sealer != nil {
		s.sealErr = sc.SealError()
	}
	for _, a := range be.Algorithms() {
		s.hw[a] = true
	}
	if err := s.reconcile(ctx); err != nil {
		cat.close()
		return nil, err
	}
	return s, nil
}

// Close closes the catalog. The Backend belongs to the caller.
func (s *Store) Close() error { return s.cat.close() }

// Device describes the backend.
func (s *Store) Device() DeviceInfo { return s.be.Info() }

// Protection reports the level a new key of alg gets on this device, before
// policy: hardware where the device computes the algorithm, sealed where it
// can at least seal, else ErrUnsupportedAlgorithm.
func (s *Store) Protection(alg Algorithm) (Protection, error) {
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
	if min, ok := s.opts.MinProtection[role]; ok && p.Rank() < min.Rank() {
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

// Count returns how many records match f and keep (nil keeps all).
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
// all its keys so that a failure leaves no half-built KeyPackages.
type Batch struct {
	s    *Store
	mu   sync.Mutex
	recs []*Record
	done bool
}

// NewBatch starts a batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s} }

// Generate creates keys for specs, in parallel on the device, and returns
// their records (not yet committed) in the order of specs. On error the
// keys this call made are destroyed again.
func (b *Batch) Generate(ctx context.Context, specs []KeySpec) ([]*Record, error) {
	s := b.s
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
	recs := make([]*Record, len(specs))
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
			recs[i], errs[i] = s.generate(ctx, sp, prots[i])
		})
	}
	wg.Wait()
	if err := firstErr(errs); err != nil {
		var made []*Record
		for _, r := range recs {
			if r != nil {
				made = append(made, r)
			}
		}
		s.destroyDevice(context.WithoutCancel(ctx), made, "batch generation failed")
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		s.destroyDevice(context.WithoutCancel(ctx), recs, "batch already finished")
		return nil, errors.New("keystore: batch already finished")
	}
	b.recs = append(b.recs, recs...)
	return recs, nil
}

func (s *Store) generate(ctx context.Context, sp KeySpec, p Protection) (*Record, error) {
	r := &Record{
		ID: s.newID(), Role: sp.Role, Suite: sp.Suite, Algorithm: sp.Algorithm,
		Protection: p, Owner: sp.Owner, State: StateActive, CreatedAt: s.opts.Now().UTC(),
	}
	switch p {
	case ProtectionHardware:
		ref, pub, err := s.be.Generate(ctx, r.ID, sp.Algorithm)
		if err != nil {
			return nil, deviceErr("generate "+string(sp.Algorithm), err)
		}
		r.DeviceRef, r.PublicKey = ref, pub
	case ProtectionSealed:
		priv, pub, err := softGenerate(sp.Algorithm)
		if err != nil {
			return nil, err
		}
		blob, err := s.sealer.Seal(ctx, priv, sealAAD(r))
		clear(priv)
		if err != nil {
			return nil, deviceErr("seal", err)
		}
		r.Sealed, r.PublicKey = blob, pub
	default:
		return nil, fmt.Errorf("protection %s: %w", p, ErrUnsupportedAlgorithm)
	}
	return r, nil
}

// firstErr reduces the errors of a batch to one line: the first failure,
// with how many keys failed (errors.Join would repeat the same device
// error once per key, over several lines).
func firstErr(errs []error) error {
	var first error
	n := 0
	for _, e := range errs {
		if e == nil {
			continue
		}
		if first == nil {
			first = e
		}
		n++
	}
	if n <= 1 {
		return first
	}
	return fmt.Errorf("%w (and %d more keys of the batch failed)", first, n-1)
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
	if len(b.recs) == 0 {
		return nil
	}
	if err := b.s.cat.putAll(b.recs); err != nil {
		b.s.destroyDevice(context.Background(), b.recs, "catalog commit failed")
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
	b.s.destroyDevice(context.WithoutCancel(ctx), b.recs, "batch aborted")
}

// destroyRef destroys the device key of a record just retired; ref is its
// device reference from before retire, which may have erased it.
func (s *Store) destroyRef(ctx context.Context, r *Record, ref []byte, why string) {
	c := *r
	c.DeviceRef = ref
	s.destroyDevice(ctx, []*Record{&c}, why)
}

func (s *Store) destroyDevice(ctx context.Context, recs []*Record, why string) {
	for _, r := range recs {
		if r == nil || r.Protection != ProtectionHardware {
			continue
		}
		if err := s.be.Destroy(ctx, r.DeviceRef); err != nil {
			// Open's reconciliation removes it at the next start.
			s.log.Warn("could not destroy device key", "key", r.ID, "why", why, "err", err)
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
// key that Open destroys, never an active record without a key.
func (s *Store) Delete(ctx context.Context, id string) (*Record, error) {
	unlock := s.locks.lock(id)
	defer unlock()
	var ref []byte
	r, err := s.cat.update(id, func(r *Record) error {
		if r.State == StateDestroyed {
			return fmt.Errorf("key %q is already destroyed: %w", id, ErrNotActive)
		}
		ref = r.DeviceRef
		if r.State == StateActive {
			s.retire(r, StateDestroyed, "deleted")
		}
		r.State = StateDestroyed
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.destroyRef(ctx, r, ref, "delete")
	return r, nil
}

func (s *Store) retire(r *Record, st State, why string) {
	r.State = st
	r.RetiredAt = s.opts.Now().UTC()
	r.RetiredWhy = why
	// A sealed blob is the key: dropping it is what destroys it. So is the
	// reference of a device that keeps no per-key state (see Lister).
	r.Sealed = nil
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
	unlock := s.locks.lock(id)
	defer unlock()
	r, err := s.cat.get(id)
	if err != nil {
		return nil, err
	}
	if r.Role != RoleInit {
		return nil, fmt.Errorf("key %q is a %s key, not an init key: %w", id, r.Role, ErrWrongRole)
	}
	if r.State != StateActive {
		return nil, fmt.Errorf("init key %q is %s: %w", id, r.State, ErrNotActive)
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
			return fmt.Errorf("init key %q is %s: %w", id, r.State, ErrNotActive)
		}
		ref = r.DeviceRef
		s.retire(r, StateConsumed, "welcome opened")
		return nil
	})
	if err != nil {
		return nil, err
	}
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

// Usable reports whether the key can serve as a key of role now: it must
// have that role (ErrWrongRole) and be active (ErrNotActive).
func (r *Record) Usable(role Role) error {
	if r.Role != role {
		return fmt.Errorf("key %q is a %s key, not a %s key: %w", r.ID, r.Role, role, ErrWrongRole)
	}
	if r.State != StateActive {
		return fmt.Errorf("key %q is %s: %w", r.ID, r.State, ErrNotActive)
	}
	return nil
}

// keyLocks serialises operations that retire a key.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	sync.Mutex
	refs int
}

func (l *keyLocks) lock(id string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k := l.m[id]
	if k == nil {
		k = &keyLock{}
		l.m[id] = k
	}
	k.refs++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}

// reconcile restores the invariant "a device key is live iff its record is
// active" after a crash, and checks that hardware keys are still sound.
func (s *Store) reconcile(ctx context.Context) error {
	lister, ok := s.be.(Lister)
	if !ok {
		return s.checkHardware(ctx, nil)
	}
	dev, err := lister.List(ctx)
	if err != nil {
		return &DeviceError{Op: "list keys", Err: err}
	}
	onDevice := map[string]bool{}
	for _, dk := range dev {
		onDevice[dk.ID] = true
		r, err := s.cat.get(dk.ID)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		case r.Live():
			continue
		}
		why := "not in the catalog (creation interrupted)"
		if r != nil {
			why = "catalog says " + string(r.State) + " (retirement interrupted)"
		}
		if err := s.be.Destroy(ctx, dk.Ref); err != nil {
			return &DeviceError{Op: "destroy stray key " + dk.ID, Err: err}
		}
		s.log.Info("destroyed stray device key", "key", dk.ID, "why", why)
	}
	if err := s.checkHardware(ctx, onDevice); err != nil {
		return err
	}
	s.log.Info("catalog reconciled", "device_keys", len(dev))
	return nil
}

// checkHardware marks active hardware records whose device key is missing
// (when onDevice says what the device has) as destroyed, and has the
// Checker confirm the others.
func (s *Store) checkHardware(ctx context.Context, onDevice map[string]bool) error {
	var lost []string
	var check []*Record
	err := s.cat.all(func(r *Record) error {
		if !r.Live() || r.Protection != ProtectionHardware {
			return nil
		}
		if onDevice != nil && !onDevice[r.ID] {
			lost = append(lost, r.ID)
			return nil
		}
		check = append(check, r)
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range lost {
		_, err := s.cat.update(id, func(r *Record) error {
			s.retire(r, StateDestroyed, "missing from the device at start-up")
			return nil
		})
		if err != nil {
			return err
		}
		s.log.Warn("catalog key missing from the device; marked destroyed", "key", id)
	}
	if c, ok := s.be.(Checker); ok {
		for _, r := range check {
			if err := c.Check(ctx, r.DeviceRef, r.Algorithm); err != nil {
				return fmt.Errorf("hardware key %q failed its start-up check: %w", r.ID, err)
			}
		}
	}
	if len(check) > 0 || len(lost) > 0 {
		s.log.Info("hardware keys checked", "checked", len(check), "lost", len(lost))
	}
	return nil
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
		return nil, fmt.Errorf("key %q is %s: %w", id, r.State, ErrNotActive)
	}
	if r.Protection != ProtectionHardware {
		return nil, fmt.Errorf("key %q has protection %s; only hardware keys can be attested: %w", id, r.Protection, ErrNotActive)
	}
	a, err := at.Attest(ctx, r.DeviceRef, r.Algorithm, nonce)
	if err != nil {
		return nil, &DeviceError{Op: "attest key " + id, Err: err}
	}
	return a, nil
}
