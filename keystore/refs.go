package keystore

import bolt "go.etcd.io/bbolt"

// ByKeyPackageRefs looks up many KeyPackageRefs in one read transaction
// (a Welcome names up to thousands of members) and returns, in the order of
// refs, the init key record of each, or nil where the ref is not ours.
func (s *Store) ByKeyPackageRefs(refs [][]byte) ([]*Record, error) {
	out := make([]*Record, len(refs))
	err := s.cat.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRefs)
		for i, ref := range refs {
			id := b.Get(ref)
			if id == nil {
				continue
			}
			r, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			out[i] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
