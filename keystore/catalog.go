package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Role is what an MLS client uses a key for.
type Role string

const (
	RoleSignature      Role = "signature"
	RoleInit           Role = "init"
	RoleLeafEncryption Role = "leaf_encryption"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	return r == RoleSignature || r == RoleInit || r == RoleLeafEncryption
}

// State is where a key is in its life. Only active keys have a private key.
type State string

const (
	StateActive State = "active"
	// StateConsumed: an init key whose Welcome was opened (RFC 9750 §5.1).
	StateConsumed State = "consumed"
	// StateDestroyed: deleted by a caller, or retired by an administrator's
	// repair after it went missing.
	StateDestroyed State = "destroyed"
	// StateMissing: an active key whose device object was not found at
	// start-up. It is quarantined, not retired: unusable until the object
	// is back (the next start makes it active again) or an administrator
	// retires it (mlskeyctl repair --retire-missing).
	StateMissing State = "missing"
)

// Record is one key in the catalog. Lookups by id and by KeyPackageRef are
// served from here, never by searching the device.
type Record struct {
	ID         string     `json:"id"`
	Role       Role       `json:"role"`
	Suite      uint16     `json:"suite"`
	Algorithm  Algorithm  `json:"algorithm"`
	PublicKey  []byte     `json:"public_key"`
	Protection Protection `json:"protection"`
	// DeviceRef is the Backend's reference for hardware keys.
	DeviceRef []byte `json:"device_ref,omitempty"`
	// Sealed is the private key encrypted by the Backend's Sealer, for
	// protection level sealed, or wrapped by its Wrapper, for protection
	// level wrapped.
	Sealed []byte `json:"sealed,omitempty"`
	// Epoch names the device key Sealed is sealed under (see Epocher);
	// empty for keys sealed before epochs existed.
	Epoch string `json:"epoch,omitempty"`
	Owner string `json:"owner,omitempty"`
	State State  `json:"state"`
	// KeyPackageRef, LastResort and SignatureKeyID describe the KeyPackage
	// an init or leaf encryption key was made for.
	KeyPackageRef  []byte `json:"key_package_ref,omitempty"`
	LastResort     bool   `json:"last_resort,omitempty"`
	SignatureKeyID string `json:"signature_key_id,omitempty"`
	// NotAfter is the end of the KeyPackage's lifetime; Sweep retires
	// init and leaf keys of KeyPackages past it.
	NotAfter time.Time `json:"not_after,omitzero"`
	// Identity is the KeyPackage credential's identity (a basic
	// credential's bytes, an X.509 leaf certificate's subject): a newer
	// last-resort KeyPackage replaces an expired one of the same identity.
	Identity  string    `json:"identity,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// RetiredWhy says why a key left the active state, for operators.
	RetiredWhy string `json:"retired_why,omitempty"`
	// Revocation is, for a retired hardware key with one (see Revoker),
	// what revokes it on the device. Not secret; kept so that a crash
	// after the catalog's commit is made good at the next start.
	Revocation []byte `json:"revocation,omitempty"`
}

// Live reports whether the record's private key should exist.
func (r *Record) Live() bool { return r.State == StateActive }

// The catalog is a bbolt file: one bucket of records keyed by id (ids sort
// by creation time), one index from KeyPackageRef to init key id, a
// bucket of metadata (schema, installation binding) and the journal of
// batches whose device work has started but whose records are not yet
// committed (see journal.go).
var (
	bucketKeys = []byte("keys")
	bucketRefs = []byte("kpref")
	bucketMeta = []byte("meta")
	bucketJrnl = []byte("journal")
	keySchema  = []byte("schema")
	// Schema 2: records in the binary form of record.go, or still in
	// JSON if written under schema 1. Schema 1: JSON records only.
	schemaValue = []byte("2")
	schemaJSON  = []byte("1")
)

type catalog struct {
	db *bolt.DB
}

func openCatalog(path string) (*catalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("catalog %s is locked by another process (is another mlskeyd running?)", path)
		}
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	var rebuild map[string]bool
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKeys, bucketRefs, bucketMeta, bucketJrnl} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil, bytes.Equal(v, schemaJSON):
			// A catalog of schema 1 holds JSON records only; they are
			// still read, and each is rewritten in the binary form when
			// it is next written. The marker changes first, so that an
			// older mlskeyd refuses the catalog by its schema instead of
			// failing on the first binary record it meets.
			if err := meta.Put(keySchema, schemaValue); err != nil {
				return err
			}
		case !bytes.Equal(v, schemaValue):
			return fmt.Errorf("catalog schema %q is not supported by this version (a newer mlskeyd wrote it)", v)
		}
		var err error
		rebuild, err = prepareIndexes(tx)
		return err
	})
	c := &catalog{db: db}
	if err == nil && rebuild != nil {
		err = c.rebuildIndexes(rebuild)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise catalog %s: %w", path, err)
	}
	return c, nil
}

func (c *catalog) close() error { return c.db.Close() }

func getRecord(tx *bolt.Tx, id string) (*Record, error) {
	v := tx.Bucket(bucketKeys).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("key %q: %w", id, ErrNotFound)
	}
	return decodeRecord([]byte(id), v)
}

// putRecord is the only way a record is written: it keeps the secondary
// indexes (index.go) in step, in the same transaction.
// appendFill is the bbolt FillPercent for buckets keyed by id (creation
// order).
const appendFill = 0.9

func putRecord(tx *bolt.Tx, r *Record) error {
	v := encodeRecord(r)
	if err := reindex(tx, r); err != nil {
		return err
	}
	keys := tx.Bucket(bucketKeys)
	// Ids begin with their creation time, so new records append at the
	// end of the B+tree: bbolt's default split at half a page would leave
	// every page half empty for good.
	keys.FillPercent = appendFill
	if err := keys.Put([]byte(r.ID), v); err != nil {
		return err
	}
	if r.Role == RoleInit && len(r.KeyPackageRef) > 0 {
		return tx.Bucket(bucketRefs).Put(r.KeyPackageRef, []byte(r.ID))
	}
	return nil
}

func (c *catalog) get(id string) (*Record, error) {
	var r *Record
	err := c.db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = getRecord(tx, id)
		return err
	})
	return r, err
}

func (c *catalog) byKeyPackageRef(ref []byte) (*Record, error) {
	var r *Record
	err := c.db.View(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketRefs).Get(ref)
		if id == nil {
			return fmt.Errorf("KeyPackageRef %x: %w", ref, ErrNotFound)
		}
		var err error
		r, err = getRecord(tx, string(id))
		return err
	})
	return r, err
}

// update applies fn to one record inside a transaction; fn's error aborts
// the transaction.
func (c *catalog) update(id string, fn func(*Record) error) (*Record, error) {
	var out *Record
	err := c.db.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
		out = r
		return putRecord(tx, r)
	})
	return out, err
}

// Filter selects records for List; zero fields match everything.
type Filter struct {
	Role  Role
	State State
	Suite uint16
	Owner string
}

func (f Filter) match(r *Record) bool {
	return (f.Role == "" || f.Role == r.Role) &&
		(f.State == "" || f.State == r.State) &&
		(f.Suite == 0 || f.Suite == r.Suite) &&
		(f.Owner == "" || f.Owner == r.Owner)
}

// list returns up to limit matching records with id > after, in id order,
// and the id to continue after ("" at the end).
func (c *catalog) list(f Filter, after string, limit int) ([]*Record, string, error) {
	if f.Owner != "" {
		return c.listOwner(f, after, limit)
	}
	var out []*Record
	next := ""
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketKeys).Cursor()
		k, v := cur.First()
		if after != "" {
			k, v = cur.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = cur.Next()
			}
		}
		for ; k != nil; k, v = cur.Next() {
			r, err := decodeRecord(k, v)
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

// all calls fn for every record, for start-up reconciliation.
func (c *catalog) all(fn func(*Record) error) error {
	return c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKeys).ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			return fn(r)
		})
	})
}
