package tpm

import (
	"crypto/sha256"

	"github.com/google/go-tpm/tpm2"
)

// lru holds the loaded keys, keyed by the SHA-256 of their blob, oldest
// first. It is guarded by the queue, like every other use of the TPM, and
// small (a TPM has few slots), so a slice is enough.
type lru struct {
	max     int
	entries []lruEntry
}

type lruEntry struct {
	key   [32]byte
	obj   tpm2.NamedHandle
	epoch string
}

func blobKeyOf(ref []byte) [32]byte { return sha256.Sum256(ref) }

// get returns the loaded object and marks it most recently used.
func (l *lru) get(key [32]byte) (tpm2.NamedHandle, bool) {
	for i, e := range l.entries {
		if e.key == key {
			copy(l.entries[i:], l.entries[i+1:])
			l.entries[len(l.entries)-1] = e
			return e.obj, true
		}
	}
	return tpm2.NamedHandle{}, false
}

func (l *lru) add(key [32]byte, obj tpm2.NamedHandle, epoch string) {
	l.entries = append(l.entries, lruEntry{key, obj, epoch})
}

func (l *lru) remove(key [32]byte) (tpm2.NamedHandle, bool) {
	for i, e := range l.entries {
		if e.key == key {
			l.entries = append(l.entries[:i], l.entries[i+1:]...)
			return e.obj, true
		}
	}
	return tpm2.NamedHandle{}, false
}

// evictOldest flushes the least recently used key. The entry goes even if
// the flush fails: a handle the TPM no longer knows is useless anyway.
func (b *Backend) evictOldest() error {
	e := b.lru.entries[0]
	b.lru.entries = b.lru.entries[1:]
	return b.flush(e.obj.Handle)
}

// withObjectSlot runs f, and when the TPM has no free object slot
// (TPM_RC_OBJECT_MEMORY: the SRK and the cached keys fill it, or the TPM
// has fewer slots than LoadedKeys assumes) flushes cached keys one at a
// time and tries again.
func (b *Backend) withObjectSlot(f func() error) error {
	for {
		err := f()
		if !isRC(err, tpm2.TPMRCObjectMemory) || len(b.lru.entries) == 0 {
			return err
		}
		if ferr := b.evictOldest(); ferr != nil {
			return ferr
		}
	}
}

// load loads a blob under its parent, the SRK or its epoch's (not cached).
func (b *Backend) load(bl *blob) (tpm2.NamedHandle, error) {
	if bl.epoch == "" {
		return b.loadUnder(b.srkAuth(nil), bl)
	}
	p, err := b.epochParent(bl.epoch)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	return b.loadUnder(tpm2.AuthHandle{Handle: p.Handle, Name: p.Name, Auth: tpm2.PasswordAuth(nil)}, bl)
}

func (b *Backend) loadUnder(parent tpm2.AuthHandle, bl *blob) (tpm2.NamedHandle, error) {
	var obj tpm2.NamedHandle
	err := b.withObjectSlot(func() error {
		rsp, err := tpm2.Load{ParentHandle: parent, InPrivate: bl.priv, InPublic: bl.pub}.Execute(b.tpm)
		if err != nil {
			return cmdErr("TPM2_Load", err)
		}
		obj = tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
		return nil
	})
	return obj, err
}

// loaded returns the key's handle, loading it (and evicting the least
// recently used key if the cache is full) on a miss.
func (b *Backend) loaded(bl *blob, key [32]byte) (tpm2.NamedHandle, error) {
	if obj, ok := b.lru.get(key); ok {
		return obj, nil
	}
	for len(b.lru.entries) >= b.lru.max {
		if err := b.evictOldest(); err != nil {
			return tpm2.NamedHandle{}, err
		}
	}
	obj, err := b.load(bl)
	if err != nil {
		return obj, err
	}
	b.lru.add(key, obj, bl.epoch)
	return obj, nil
}
