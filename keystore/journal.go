package keystore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// The journal makes the one destruction start-up may do on its own
// authority provable. Before a batch touches the device, the ids it is about
// to create are committed to the journal bucket (batch id → JSON list of key
// ids); the commit transaction that writes the batch's records deletes the
// entry, and so does an abort once every device key of the batch is gone.
// At start-up, a device object whose id is in the journal and not in the
// catalog was therefore made by this installation after its last commit for
// that batch: an interrupted batch, safe to destroy. Every other device
// object the catalog does not know is only quarantined.

// journalAdd appends ids to the entry of batch jid and commits.
func (c *catalog) journalAdd(jid string, ids []string) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJrnl)
		cur, err := journalIDs(b, jid)
		if err != nil {
			return err
		}
		return putJournal(b, jid, append(cur, ids...))
	})
}

// journalRemove drops ids from the entry of batch jid, and the entry when it
// becomes empty.
func (c *catalog) journalRemove(jid string, ids []string) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJrnl)
		cur, err := journalIDs(b, jid)
		if err != nil {
			return err
		}
		cur = slices.DeleteFunc(cur, func(id string) bool { return slices.Contains(ids, id) })
		return putJournal(b, jid, cur)
	})
}

// commitBatch writes a batch's records and deletes its journal entry in one
// transaction: the commit point of a batch.
func (c *catalog) commitBatch(jid string, rs []*Record) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		for _, r := range rs {
			if err := putRecord(tx, r); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketJrnl).Delete([]byte(jid))
	})
}

// journal returns every journalled key id and its batch.
func (c *catalog) journal() (map[string]string, error) {
	out := map[string]string{}
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJrnl).ForEach(func(k, v []byte) error {
			var ids []string
			if err := json.Unmarshal(v, &ids); err != nil {
				return fmt.Errorf("catalog journal entry %q is corrupt: %w", k, err)
			}
			for _, id := range ids {
				out[id] = string(k)
			}
			return nil
		})
	})
	return out, err
}

// journalDrop deletes whole journal entries.
func (c *catalog) journalDrop(jids []string) error {
	if len(jids) == 0 {
		return nil
	}
	return c.db.Update(func(tx *bolt.Tx) error {
		for _, jid := range jids {
			if err := tx.Bucket(bucketJrnl).Delete([]byte(jid)); err != nil {
				return err
			}
		}
		return nil
	})
}

func journalIDs(b *bolt.Bucket, jid string) ([]string, error) {
	v := b.Get([]byte(jid))
	if v == nil {
		return nil, nil
	}
	var ids []string
	if err := json.Unmarshal(v, &ids); err != nil {
		return nil, fmt.Errorf("catalog journal entry %q is corrupt: %w", jid, err)
	}
	return ids, nil
}

func putJournal(b *bolt.Bucket, jid string, ids []string) error {
	if len(ids) == 0 {
		return b.Delete([]byte(jid))
	}
	v, err := json.Marshal(ids)
	if err != nil {
		return err
	}
	return b.Put([]byte(jid), v)
}

// metaGet reads catalog metadata; "" when unset.
func (c *catalog) metaGet(key string) (string, error) {
	var v string
	err := c.db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get([]byte(key)))
		return nil
	})
	return v, err
}

// metaPut writes metadata in one transaction; an empty value deletes.
func (c *catalog) metaPut(kv map[string]string) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		for k, v := range kv {
			var err error
			if v == "" {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), []byte(v))
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// empty reports whether the catalog holds no record at all.
func (c *catalog) empty() (bool, error) {
	n := 0
	err := c.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketKeys).Cursor().First()
		if k != nil {
			n = 1
		}
		return nil
	})
	return n == 0, err
}

// destroyBatch destroys the device keys of a batch that will not commit and
// reports them. Each key leaves the journal once nothing of it is left on
// the device; a key whose destruction failed, or whose generation failed
// midway (it is not in recs), stays journalled for the next start.
func (s *Store) destroyBatch(ctx context.Context, jid string, recs []*Record, why string) {
	ctx, cancel := s.destroyContext(ctx)
	defer cancel()
	var gone, cleared []string
	for _, r := range recs {
		if r == nil {
			continue
		}
		if r.Protection == ProtectionHardware {
			if err := s.be.Destroy(ctx, r.DeviceRef); err != nil {
				s.log.Warn("could not destroy device key; the next start destroys it", "key", r.ID, "why", why, "err", err)
				continue
			}
			gone = append(gone, r.ID)
		}
		cleared = append(cleared, r.ID)
	}
	if len(gone) > 0 {
		s.event(EventDestroyed, why+": keys of an uncommitted batch", gone...)
	}
	if err := s.cat.journalRemove(jid, cleared); err != nil {
		s.log.Warn("could not update the batch journal; the next start finishes it", "err", err)
	}
}
