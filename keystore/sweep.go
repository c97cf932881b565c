package keystore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Destruction of a device key must not depend on the caller that asked for
// it: once the catalog says a key is consumed or destroyed, the device call
// runs under the store's own context (bounded by Options.DestroyTimeout), a
// key whose destruction still failed is remembered, retried by Sweep and at
// Close, and reported by Close so the daemon can exit non-zero.

// DefaultDestroyTimeout bounds one device destruction when
// Options.DestroyTimeout is zero.
const DefaultDestroyTimeout = 30 * time.Second

// ErrShuttingDown is returned by batches started or still generating when
// Shutdown was called: what they generated has been destroyed again.
var ErrShuttingDown = errors.New("store shutting down; batch aborted, nothing was created")

// ErrInUse is wrapped by InUseError.
var ErrInUse = errors.New("key is in use")

// InUseError refuses to delete a signature key that unused KeyPackages use.
type InUseError struct {
	ID          string
	KeyPackages int
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("key %q: %d unused KeyPackages use this key; delete them first or pass cascade", e.ID, e.KeyPackages)
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// lifecycle is the store's own context and what it still owes the device.
// Its zero value is ready: the store creates it lazily.
type lifecycle struct {
	once   sync.Once
	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc

	mu      sync.Mutex
	pending map[string]pendingDestroy // by key id
	// revoked holds the retired keys whose revocation the device has
	// confirmed since start-up, so that sweeps do not ask again.
	revoked map[string]bool
	sweeper sync.WaitGroup
}

type pendingDestroy struct {
	ref []byte
	why string
}

func (l *lifecycle) init() {
	l.once.Do(func() { l.ctx, l.cancel = context.WithCancel(context.Background()) })
}

func (l *lifecycle) done() bool { l.init(); return l.ctx.Err() != nil }

// bind returns ctx, cancelled also when the store shuts down.
func (l *lifecycle) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	l.init()
	c, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return c, func() { stop(); cancel() }
}

func (l *lifecycle) owe(id string, ref []byte, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == nil {
		l.pending = map[string]pendingDestroy{}
	}
	l.pending[id] = pendingDestroy{ref: ref, why: why}
}

func (l *lifecycle) paid(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, id)
}

func (l *lifecycle) markRevoked(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.revoked == nil {
		l.revoked = map[string]bool{}
	}
	l.revoked[id] = true
}

func (l *lifecycle) isRevoked(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.revoked[id]
}

func (l *lifecycle) owed() map[string]pendingDestroy {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]pendingDestroy, len(l.pending))
	for id, p := range l.pending {
		out[id] = p
	}
	return out
}

// destroyContext is the context of a device destruction: detached from the
// request that caused it, so a client that gives up does not leave a
// retired key on the device, and bounded so a hung device cannot hold the
// call forever.
func (s *Store) destroyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := s.opts.DestroyTimeout
	if d <= 0 {
		d = DefaultDestroyTimeout
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Shutdown starts the store's shutdown. Batches still generating stop and
// destroy what they made, and new ones are refused, both with
// ErrShuttingDown; a batch that has finished generating may still commit.
// Other operations are not affected. The sweeper stops.
func (s *Store) Shutdown() {
	s.life.init()
	s.life.cancel()
}

// Share holds id's lock shared until release is called. Delete and the
// consumption of an init key take it exclusively, so an operation on a key
// that holds it finishes before a deletion commits, and one that starts
// after sees the key retired. Sign, decrypt, attest and KeyPackage creation
// with an existing signature key hold it for their whole call; they must
// not take it twice.
func (s *Store) Share(id string) (release func()) { return s.locks.share(id) }

// Sweep destroys the device keys whose catalog record exists and is no
// longer active (consumed or destroyed), which a failed or interrupted
// destruction left behind. A device key the catalog does not know is never
// touched: it may belong to a batch being created. Each destruction is
// reported to Options.OnEvent (EventDestroyed; Err set when the device refused). It returns how many keys it destroyed.
//
// It first retires the keys of expired KeyPackages (ExpireKeyPackages).
func (s *Store) Sweep(ctx context.Context) (int, error) {
	var errs []error
	if k, err := s.ExpireKeyPackages(ctx); err != nil || k > 0 {
		s.log.Info("sweep: expired KeyPackages", "retired", k, "err", err)
		errs = append(errs, err)
	}
	if err := s.settleRevocations(ctx); err != nil {
		errs = append(errs, err)
	}
	lister, ok := s.be.(Lister)
	if !ok {
		return 0, errors.Join(errs...) // retiring a key erased its reference: nothing can be left
	}
	dev, err := lister.List(ctx)
	if err != nil {
		return 0, errors.Join(append(errs, &DeviceError{Op: "list keys", Err: err})...)
	}
	n := 0
	for _, dk := range dev {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		done, err := s.sweepOne(ctx, dk)
		if done {
			n++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

func (s *Store) sweepOne(ctx context.Context, dk DeviceKey) (bool, error) {
	// Read first, lock only retired keys: waiting for the exclusive lock
	// of an active key would hold up every new user of it behind a long
	// holder, such as a KeyPackage batch signing with it.
	retired := func() (*Record, error) {
		r, err := s.cat.get(dk.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, nil
		case err != nil:
			return nil, err
		case r.State != StateConsumed && r.State != StateDestroyed:
			// Active, or missing: a quarantined key that is back on the
			// device is restored at the next start, never destroyed here.
			return nil, nil
		}
		return r, nil
	}
	if r, err := retired(); r == nil {
		return false, err
	}
	unlock := s.locks.lock(dk.ID)
	defer unlock()
	r, err := retired()
	if r == nil {
		return false, err
	}
	why := "sweep: catalog says " + string(r.State)
	dctx, cancel := s.destroyContext(ctx)
	defer cancel()
	err = s.be.Destroy(dctx, dk.Ref)
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(Event{Kind: EventDestroyed, KeyIDs: []string{dk.ID}, Reason: why, Err: err})
	}
	if err != nil {
		s.log.Warn("sweep could not destroy device key", "key", dk.ID, "state", r.State, "err", err)
		return false, &DeviceError{Op: "destroy key " + dk.ID, Err: err}
	}
	s.life.paid(dk.ID)
	s.log.Info("sweep destroyed device key", "key", dk.ID, "state", r.State)
	return true, nil
}

// StartSweeper runs Sweep every interval until Shutdown or Close.
func (s *Store) StartSweeper(every time.Duration) {
	if every <= 0 {
		return
	}
	s.life.init()
	s.life.sweeper.Go(func() {
		// Start-up reconciled the device already; KeyPackages that
		// expired while the daemon was down go at once.
		err := s.guarded("expire KeyPackages", func() error {
			_, err := s.ExpireKeyPackages(s.life.ctx)
			return err
		})
		if err != nil && s.life.ctx.Err() == nil {
			s.log.Warn("expiring KeyPackages", "err", err)
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.life.ctx.Done():
				return
			case <-t.C:
			}
			n := 0
			err := s.guarded("sweep", func() (err error) {
				n, err = s.Sweep(s.life.ctx)
				return err
			})
			if err != nil && s.life.ctx.Err() == nil {
				s.log.Warn("sweep", "destroyed", n, "err", err)
			}
		}
	})
}

// settle stops the sweeper and retries the destructions that failed. It
// returns an error naming what is still on the device: the next start's
// reconciliation removes it.
func (s *Store) settle() error {
	s.Shutdown()
	s.life.sweeper.Wait()
	owed := s.life.owed()
	ids := make([]string, 0, len(owed))
	for id := range owed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ctx, cancel := s.destroyContext(context.Background())
		err := s.be.Destroy(ctx, owed[id].ref)
		cancel()
		if err == nil {
			s.life.paid(id)
			s.log.Info("destroyed device key at close", "key", id, "why", owed[id].why)
		}
	}
	left := s.life.owed()
	for _, id := range ids {
		if p, ok := left[id]; ok {
			return fmt.Errorf("%d device keys could not be destroyed (first: key %s, %s); the next start removes them", len(left), id, p.why)
		}
	}
	return nil
}

// lockAll takes the locks of ids exclusively in sorted order, so that two
// callers locking overlapping sets cannot deadlock.
func (l *keyLocks) lockAll(ids []string) (unlock func()) {
	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	var unlocks []func()
	for i, id := range sorted {
		if i > 0 && id == sorted[i-1] {
			continue
		}
		unlocks = append(unlocks, l.lock(id))
	}
	return func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
}

// updateMany runs fn in one write transaction, with get and put for
// records; fn's error aborts the transaction.
func (c *catalog) updateMany(fn func(get func(string) (*Record, error), put func(*Record) error) error) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		return fn(func(id string) (*Record, error) { return getRecord(tx, id) },
			func(r *Record) error { return putRecord(tx, r) })
	})
}
