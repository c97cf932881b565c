package tpm

import (
	"sync"
)

// blobCache keeps parsed key references. Parsing one (go-tpm's reflection
// over TPM2B_PUBLIC and TPM2B_PRIVATE, and the policy digest of a key with
// a revocation bit) was about a fifth of a signature's CPU in the process,
// paid again for every use of a key that stays loaded. Entries are keyed by
// the SHA-256 of the reference, so an entry can only describe the bytes it
// was parsed from, and a parsed blob is never modified after keyBlob
// returns it, so entries are shared without copying. What depends on the
// Backend's state (the algorithms the TPM supports) is checked on each
// use, not cached.
type blobCache struct {
	mu    sync.Mutex
	max   int
	m     map[[32]byte]*blob
	order [][32]byte // insertion order; the oldest goes first
}

// blobCacheSize bounds the cache: about a kilobyte per entry.
const blobCacheSize = 1024

func (c *blobCache) get(key [32]byte) *blob {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *blobCache) put(key [32]byte, bl *blob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[[32]byte]*blob)
		if c.max <= 0 {
			c.max = blobCacheSize
		}
	}
	if _, ok := c.m[key]; ok {
		return
	}
	for len(c.order) >= c.max {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.m[key] = bl
	c.order = append(c.order, key)
}
