package keystore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Secondary indexes of the catalog, kept in the same transaction as the
// records they index, so that no request has to read every record: the
// cost of a request must not grow with the number of keys.
//
//	idxOwner   owner 0x00 id                -> ""       every record
//	idxSigKP   signature id 0x00 init id     -> ref      live init keys of a KeyPackage
//	idxKPLeaf  KeyPackageRef                 -> leaf id  leaf keys of a KeyPackage
//	idxExpiry  not_after (8 bytes BE) id     -> ""       live init keys with a lifetime
//	idxUnused  owner 0x00 suite len identity -> counts  live init keys of KeyPackages
//	idxLastRes owner 0x00 suite len identity id -> ""  live last-resort init keys
//	idxCheck   id                            -> state, protection, algorithm, ref
//	                                            active hardware keys and every missing key
//	idxEpoch   epoch 0x00 id                 -> "a" active / "m" missing, then "s" if
//	                                            sealed or wrapped (it can move epochs):
//	                                            keys in an epoch, and sealed or wrapped
//	                                            keys from before epochs (epoch "")
//	idxRevoke  id                            -> revocation
//	                                            retired hardware keys with a revocation
//
// (suite: 2 bytes, len: 4 bytes, big-endian; len is the identity's length,
// as an identity may hold any byte.)
//
// The counts are two big-endian uint64: regular and last-resort
// KeyPackages whose init key is active (unused). Every write of a record
// removes the old record's entries and adds the new one's, so the indexes
// follow any change of state without special cases.
var (
	idxOwner   = []byte("idx-owner")
	idxSigKP   = []byte("idx-sigkp")
	idxKPLeaf  = []byte("idx-kpleaf")
	idxExpiry  = []byte("idx-expiry")
	idxUnused  = []byte("idx-unused")
	idxLastRes = []byte("idx-lastresort")
	idxCheck   = []byte("idx-check")
	idxEpoch   = []byte("idx-epoch")
	idxRevoke  = []byte("idx-revoke")

	indexBuckets = [][]byte{idxOwner, idxSigKP, idxKPLeaf, idxExpiry, idxUnused, idxLastRes, idxCheck, idxEpoch, idxRevoke}

	// keyIndexVersion in the meta bucket says the indexes are complete. A
	// catalog written before they existed has none: Open builds them once.
	keyIndexVersion = []byte("index")
	indexVersion    = []byte("6")

	// partialRebuilds name, for an index version, the buckets that differ
	// from the current version's: only those are rebuilt, so that an
	// upgrade of a large catalog reads every record once but writes only
	// the few entries that change (a full rebuild of a million keys
	// rewrites every index: 18.7 s against 2.3 s, docs/performance.md).
	// Version 6 added idx-revoke and rebuilds the buckets keyed by
	// identity, which schema 1 catalogs could hold with bytes their JSON
	// records had replaced.
	partialRebuilds = map[string][][]byte{
		"5": {idxUnused, idxLastRes, idxRevoke},
	}
)

func join(a, b []byte) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// lastResortPrefix is the key of a KeyPackage's stock: one owner, suite
// and identity. Last-resort KeyPackages of one stock replace each other.
func lastResortPrefix(r *Record) []byte {
	k := binary.BigEndian.AppendUint16(join([]byte(r.Owner), nil), r.Suite)
	k = binary.BigEndian.AppendUint32(k, uint32(len(r.Identity)))
	return append(k, r.Identity...)
}

func expiryKey(t time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(t.Unix())), id...)
}

// unusedKP reports whether r is the init key of a KeyPackage not yet used.
func unusedKP(r *Record) bool {
	return r.Role == RoleInit && r.Live() && len(r.KeyPackageRef) > 0
}

// indexRecord adds (delta 1) or removes (delta -1) r's index entries.
func indexRecord(tx *bolt.Tx, r *Record, delta int) error {
	return indexRecordIn(tx, r, delta, nil)
}

// indexRecordIn is indexRecord for the buckets in only (every bucket if
// only is nil).
func indexRecordIn(tx *bolt.Tx, r *Record, delta int, only map[string]bool) error {
	id := []byte(r.ID)
	set := func(bucket, k, v []byte) error {
		if only != nil && !only[string(bucket)] {
			return nil
		}
		b := tx.Bucket(bucket)
		if bytes.Equal(bucket, idxCheck) || bytes.Equal(bucket, idxRevoke) {
			b.FillPercent = appendFill // keyed by id, like the records
		}
		if delta < 0 {
			return b.Delete(k)
		}
		return b.Put(k, v)
	}
	if err := set(idxOwner, join([]byte(r.Owner), id), nil); err != nil {
		return err
	}
	if r.Role == RoleLeafEncryption && len(r.KeyPackageRef) > 0 {
		if err := set(idxKPLeaf, r.KeyPackageRef, id); err != nil {
			return err
		}
	}
	if checkedAtStart(r) {
		if err := set(idxCheck, id, encodeCheckEntry(r)); err != nil {
			return err
		}
	}
	if owesRevocation(r) {
		if err := set(idxRevoke, id, r.Revocation); err != nil {
			return err
		}
	}
	if st, ok := epochEntry(r); ok {
		if err := set(idxEpoch, join([]byte(r.Epoch), id), st); err != nil {
			return err
		}
	}
	if !unusedKP(r) {
		return nil
	}
	if r.SignatureKeyID != "" {
		if err := set(idxSigKP, join([]byte(r.SignatureKeyID), id), r.KeyPackageRef); err != nil {
			return err
		}
	}
	if r.LastResort {
		if err := set(idxLastRes, append(lastResortPrefix(r), id...), nil); err != nil {
			return err
		}
	}
	if !r.NotAfter.IsZero() {
		if err := set(idxExpiry, expiryKey(r.NotAfter, r.ID), nil); err != nil {
			return err
		}
	}
	if only != nil && !only[string(idxUnused)] {
		return nil
	}
	b := tx.Bucket(idxUnused)
	k := lastResortPrefix(r)
	counts := make([]byte, 16)
	copy(counts, b.Get(k))
	at := 0
	if r.LastResort {
		at = 8
	}
	n := int64(binary.BigEndian.Uint64(counts[at:])) + int64(delta)
	if n < 0 {
		return fmt.Errorf("catalog index: unused KeyPackage count of %q below zero", r.Owner)
	}
	binary.BigEndian.PutUint64(counts[at:], uint64(n))
	if bytes.Equal(counts, make([]byte, 16)) {
		return b.Delete(k)
	}
	return b.Put(k, counts)
}

// reindex replaces the index entries of the record stored under r.ID (if
// any) by r's. putRecord calls it before writing r.
func reindex(tx *bolt.Tx, r *Record) error {
	if v := tx.Bucket(bucketKeys).Get([]byte(r.ID)); v != nil {
		old, err := decodeRecord([]byte(r.ID), v)
		if err != nil {
			return err
		}
		if err := indexRecord(tx, old, -1); err != nil {
			return err
		}
	}
	return indexRecord(tx, r, 1)
}

// rebuildChunk is how many records one transaction of an index rebuild
// indexes. bbolt splits the nodes a transaction changed only at its
// commit, so a rebuild in one transaction inserts every entry of an index
// into one ever-growing node: quadratic, and minutes at a million keys.
// Committing every rebuildChunk records keeps nodes small and memory
// bounded; the version is written by the last transaction only, so a
// rebuild cut short starts over at the next open.
var rebuildChunk = 20000

// prepareIndexes creates the index buckets and, when the catalog has no
// indexes yet or an older version of them, empties the ones to rebuild
// (from a version partialRebuilds knows, only those that changed since)
// and returns them; nil when the indexes are current.
func prepareIndexes(tx *bolt.Tx) (map[string]bool, error) {
	meta := tx.Bucket(bucketMeta)
	have := meta.Get(keyIndexVersion)
	if bytes.Equal(have, indexVersion) {
		for _, b := range indexBuckets {
			if tx.Bucket(b) == nil {
				return nil, fmt.Errorf("catalog index %s is missing", b)
			}
		}
		return nil, nil
	}
	rebuild := indexBuckets
	if part, ok := partialRebuilds[string(have)]; ok {
		rebuild = part
		for _, b := range indexBuckets {
			if tx.Bucket(b) == nil && !slices.ContainsFunc(part, func(p []byte) bool { return bytes.Equal(p, b) }) {
				rebuild = indexBuckets // not what that version left: all of them
				break
			}
		}
	}
	only := map[string]bool{}
	for _, b := range rebuild {
		only[string(b)] = true
		if tx.Bucket(b) != nil {
			if err := tx.DeleteBucket(b); err != nil {
				return nil, err
			}
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return nil, err
		}
	}
	return only, nil
}

// indexRecords adds the entries in only of up to n records, those after
// the key after (from the first if after is nil), and returns the last
// key it indexed; done when no record is left, and then marks the
// indexes current.
func indexRecords(tx *bolt.Tx, only map[string]bool, after []byte, n int) (last []byte, done bool, err error) {
	c := tx.Bucket(bucketKeys).Cursor()
	k, v := c.First()
	if after != nil {
		if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	}
	for ; k != nil && n > 0; k, v = c.Next() {
		r, err := decodeRecord(k, v)
		if err != nil {
			return nil, false, err
		}
		if err := indexRecordIn(tx, r, 1, only); err != nil {
			return nil, false, err
		}
		last, n = k, n-1
	}
	if k != nil {
		return bytes.Clone(last), false, nil
	}
	return nil, true, tx.Bucket(bucketMeta).Put(keyIndexVersion, indexVersion)
}

// rebuildIndexes fills the emptied buckets in only from the records,
// rebuildChunk records per transaction.
func (c *catalog) rebuildIndexes(only map[string]bool) error {
	var after []byte
	for done := false; !done; {
		err := c.db.Update(func(tx *bolt.Tx) error {
			var err error
			after, done, err = indexRecords(tx, only, after, rebuildChunk)
			return err
		})
		if err != nil {
			return fmt.Errorf("rebuild the catalog indexes: %w", err)
		}
	}
	return nil
}

// UnusedCount is how many KeyPackages of an owner, suite and identity
// have an active init key.
type UnusedCount struct {
	Owner      string
	Suite      uint16
	Identity   string
	Regular    int
	LastResort int
}

// unusedCounts returns the counts for owner (every owner if all) and
// suite (every suite if 0), from the counters: no record is read.
func (c *catalog) unusedCounts(owner string, all bool, suite uint16) ([]UnusedCount, error) {
	var out []UnusedCount
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(idxUnused).Cursor()
		var prefix []byte
		if !all {
			prefix = join([]byte(owner), nil)
		}
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			o := bytes.IndexByte(k, 0)
			if o < 0 || len(k) < o+7 || len(v) != 16 {
				return fmt.Errorf("catalog index %s: malformed entry", idxUnused)
			}
			s := binary.BigEndian.Uint16(k[o+1:])
			idLen := binary.BigEndian.Uint32(k[o+3:])
			if uint64(len(k)) != uint64(o)+7+uint64(idLen) {
				return fmt.Errorf("catalog index %s: malformed entry", idxUnused)
			}
			if suite != 0 && s != suite {
				continue
			}
			out = append(out, UnusedCount{
				Owner: string(k[:o]), Suite: s, Identity: string(k[o+7:]),
				Regular:    int(binary.BigEndian.Uint64(v)),
				LastResort: int(binary.BigEndian.Uint64(v[8:])),
			})
		}
		return nil
	})
	return out, err
}

// UnusedKeyPackages returns, per suite and identity (for suite alone if
// not 0), how many KeyPackages of owner are unused. It reads counters, not
// records.
func (s *Store) UnusedKeyPackages(owner string, suite uint16) ([]UnusedCount, error) {
	return s.cat.unusedCounts(owner, false, suite)
}

// AllUnusedKeyPackages is UnusedKeyPackages for every owner.
func (s *Store) AllUnusedKeyPackages(suite uint16) ([]UnusedCount, error) {
	return s.cat.unusedCounts("", true, suite)
}

// keyPackagesOf returns the unused KeyPackages signed by signature key
// sigID, as init key id to KeyPackageRef, from the index.
func keyPackagesOf(tx *bolt.Tx, sigID string) map[string][]byte {
	out := map[string][]byte{}
	prefix := join([]byte(sigID), nil)
	cur := tx.Bucket(idxSigKP).Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		out[string(k[len(prefix):])] = bytes.Clone(v)
	}
	return out
}

// leafOf returns the leaf encryption key id of a KeyPackage, "" if none.
func leafOf(tx *bolt.Tx, ref []byte) string {
	return string(tx.Bucket(idxKPLeaf).Get(ref))
}

// listOwner is list for a filter naming an owner: it walks that owner's
// index entries only.
func (c *catalog) listOwner(f Filter, after string, limit int) ([]*Record, string, error) {
	var out []*Record
	next := ""
	prefix := join([]byte(f.Owner), nil)
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(idxOwner).Cursor()
		k, _ := cur.Seek(prefix)
		if after != "" {
			start := join([]byte(f.Owner), []byte(after))
			k, _ = cur.Seek(start)
			if k != nil && bytes.Equal(k, start) {
				k, _ = cur.Next()
			}
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			r, err := getRecord(tx, string(k[len(prefix):]))
			if err != nil {
				return err
			}
			if !f.match(r) {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].ID
				return nil
			}
			out = append(out, r)
		}
		return nil
	})
	return out, next, err
}

// expiredInitKeys returns up to limit live init keys whose KeyPackage's
// not_after is before now, oldest first, from the index.
func (c *catalog) expiredInitKeys(now time.Time, limit int) ([]*Record, error) {
	var out []*Record
	end := binary.BigEndian.AppendUint64(nil, uint64(now.Unix()))
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(idxExpiry).Cursor()
		for k, _ := cur.First(); k != nil && bytes.Compare(k[:8], end) < 0 && len(out) < limit; k, _ = cur.Next() {
			r, err := getRecord(tx, string(k[8:]))
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// newerLastResort reports whether a live last-resort KeyPackage of the same
// owner, suite and identity as r was made after r (ids sort by creation).
func newerLastResort(tx *bolt.Tx, r *Record) bool {
	prefix := lastResortPrefix(r)
	cur := tx.Bucket(idxLastRes).Cursor()
	k, _ := cur.Seek(append(bytes.Clone(prefix), r.ID...))
	if k != nil && bytes.Equal(k[len(prefix):], []byte(r.ID)) {
		k, _ = cur.Next()
	}
	return k != nil && bytes.HasPrefix(k, prefix)
}

// KeyPackageEntry is one KeyPackage as the catalog knows it: its init key
// record and its leaf encryption key's id.
type KeyPackageEntry struct {
	Init   *Record
	LeafID string
}

// ListKeyPackages pages through KeyPackages (their init keys) in id order,
// after the given init key id: owner's (every owner's if all), of suite
// (all if 0), only unused ones if unusedOnly. It walks the owner's index
// entries, not the whole catalog, unless all is set.
func (s *Store) ListKeyPackages(owner string, all bool, suite uint16, unusedOnly bool, after string, limit int) ([]KeyPackageEntry, string, error) {
	var out []KeyPackageEntry
	next := ""
	err := s.cat.db.View(func(tx *bolt.Tx) error {
		var cur *bolt.Cursor
		var prefix []byte
		if all {
			cur = tx.Bucket(bucketKeys).Cursor()
		} else {
			cur = tx.Bucket(idxOwner).Cursor()
			prefix = join([]byte(owner), nil)
		}
		k, _ := cur.Seek(prefix)
		if after != "" {
			start := append(bytes.Clone(prefix), after...)
			k, _ = cur.Seek(start)
			if k != nil && bytes.Equal(k, start) {
				k, _ = cur.Next()
			}
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			r, err := getRecord(tx, string(k[len(prefix):]))
			if err != nil {
				return err
			}
			if r.Role != RoleInit || len(r.KeyPackageRef) == 0 || (suite != 0 && r.Suite != suite) || (unusedOnly && !r.Live()) {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].Init.ID
				return nil
			}
			out = append(out, KeyPackageEntry{Init: r, LeafID: leafOf(tx, r.KeyPackageRef)})
		}
		return nil
	})
	return out, next, err
}

// checkedAtStart reports whether start-up looks at r (checkHardware): an
// active hardware key, or any missing key. The index of those spares
// start-up from decoding every record, most of which are retired keys or
// sealed ones that need nothing there.
func checkedAtStart(r *Record) bool {
	return r.State == StateMissing || (r.State == StateActive && r.Protection == ProtectionHardware)
}

// encodeCheckEntry keeps what start-up needs of r: state, protection and
// algorithm (each a length byte and the string) and the device reference.
func encodeCheckEntry(r *Record) []byte {
	v := make([]byte, 0, 3+len(r.State)+len(r.Protection)+len(r.Algorithm)+len(r.DeviceRef))
	for _, f := range []string{string(r.State), string(r.Protection), string(r.Algorithm)} {
		v = append(append(v, byte(len(f))), f...)
	}
	return append(v, r.DeviceRef...)
}

// checkEntry is what start-up's hardware check needs of a key, read from
// idxCheck. A large catalog has one per active hardware key held at once
// (a million of them in docs/performance.md), so it is a small value with
// its names shared, not a Record with strings of its own.
type checkEntry struct {
	ID         string
	State      State
	Protection Protection
	Algorithm  Algorithm
	DeviceRef  []byte
}

// known returns the table's copy of name if it has one, so that a
// million entries do not each allocate the same few strings.
func known(names []string, name []byte) string {
	for _, n := range names {
		if n == string(name) {
			return n
		}
	}
	return string(name)
}

func decodeCheckEntry(id, v []byte) (checkEntry, error) {
	var f [3][]byte
	for i := range f {
		if len(v) < 1 || len(v) < 1+int(v[0]) {
			return checkEntry{}, fmt.Errorf("catalog index %s: malformed entry for %q", idxCheck, id)
		}
		f[i], v = v[1:1+int(v[0])], v[1+int(v[0]):]
	}
	e := checkEntry{ID: string(id), State: State(known(stateNames, f[0])),
		Protection: Protection(known(protectionNames, f[1])), Algorithm: Algorithm(known(algorithmNames, f[2]))}
	if len(v) > 0 {
		e.DeviceRef = bytes.Clone(v)
	}
	return e, nil
}

// checkedAtStartRecords calls fn with the check entry of every key
// checkedAtStart selects.
func (c *catalog) checkedAtStartRecords(fn func(checkEntry) error) error {
	return c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(idxCheck).ForEach(func(k, v []byte) error {
			e, err := decodeCheckEntry(k, v)
			if err != nil {
				return err
			}
			return fn(e)
		})
	})
}

// owesRevocation reports whether r is in idxRevoke: a retired hardware
// key whose revocation the device must hold set (see Revoker). Start-up
// and every sweep read these, with idxCheck for the active ones, instead
// of every record.
func owesRevocation(r *Record) bool {
	return len(r.Revocation) > 0 && r.Protection == ProtectionHardware &&
		(r.State == StateConsumed || r.State == StateDestroyed)
}

// owedRevocations calls fn with the id and revocation of every record
// owesRevocation selects.
func (c *catalog) owedRevocations(fn func(id string, rev []byte) error) error {
	return c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(idxRevoke).ForEach(func(k, v []byte) error {
			return fn(string(k), bytes.Clone(v))
		})
	})
}

// epochEntry says whether r belongs in idxEpoch and with what value: a
// key that holds its epoch's device key (active or missing, since a
// missing key may come back), and a sealed or wrapped key from before
// epochs, which a new epoch must take in.
func epochEntry(r *Record) ([]byte, bool) {
	var st []byte
	switch r.State {
	case StateActive:
		st = []byte("a")
	case StateMissing:
		st = []byte("m")
	default:
		return nil, false
	}
	movable := r.Protection == ProtectionSealed || r.Protection == ProtectionWrapped
	if r.Epoch == "" && !movable {
		return nil, false
	}
	if movable {
		st = append(st, 's')
	}
	return st, true
}

// epochUse is what the index knows of one epoch's keys.
type epochUse struct {
	Epoch   string
	Active  int
	Missing int
	IDs     []string // sealed or wrapped keys only, and only when asked for
}

// epochUses returns, per epoch in use ("" for keys sealed before epochs),
// how many active and missing keys it holds, and the ids of the sealed or
// wrapped ones among them if withIDs.
// The cost follows the keys in epochs, not the catalog's size.
func (c *catalog) epochUses(withIDs bool) ([]epochUse, error) {
	var out []epochUse
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(idxEpoch).ForEach(func(k, v []byte) error {
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return fmt.Errorf("catalog index %s: malformed entry", idxEpoch)
			}
			ep := string(k[:i])
			if len(out) == 0 || out[len(out)-1].Epoch != ep {
				out = append(out, epochUse{Epoch: ep})
			}
			u := &out[len(out)-1]
			if len(v) > 0 && v[0] == 'm' {
				u.Missing++
			} else {
				u.Active++
			}
			if withIDs && len(v) > 1 && v[1] == 's' {
				u.IDs = append(u.IDs, string(k[i+1:]))
			}
			return nil
		})
	})
	return out, err
}

// epochsInUse returns the epochs that hold an active or missing key,
// jumping from one epoch to the next: a few B+tree seeks per epoch, so
// that retiring a key (which may free its epoch) reads no other record.
func (c *catalog) epochsInUse() ([]string, error) {
	var out []string
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(idxEpoch).Cursor()
		for k, _ := cur.First(); k != nil; {
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return fmt.Errorf("catalog index %s: malformed entry", idxEpoch)
			}
			out = append(out, string(k[:i]))
			// The next key after every "epoch 0x00 ..." is at or past
			// "epoch 0x01".
			k, _ = cur.Seek(append(slices.Clone(k[:i]), 1))
		}
		return nil
	})
	return out, err
}
