package mlsops

import (
	"context"
	"errors"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

// ErrNoEntry: no entry of a Welcome is addressed to a KeyPackage the
// caller may use.
var ErrNoEntry = errors.New("no entry is addressed to a KeyPackage of this daemon")

// GroupInfoError: the group secrets opened but the GroupInfo did not
// decrypt with them. The init key was not consumed.
type GroupInfoError struct{ Err error }

func (e *GroupInfoError) Error() string { return e.Err.Error() }
func (e *GroupInfoError) Unwrap() error { return e.Err }

// FindEntry returns the first entry of w addressed to one of the store's
// KeyPackages that mayUse accepts (nil accepts all), and that
// KeyPackage's init key. A Welcome names each new member once. denied is
// called for each entry of a KeyPackage mayUse refused.
func FindEntry(store *keystore.Store, w *mls.Welcome, mayUse func(*keystore.Record) bool, denied func(*keystore.Record)) (*keystore.Record, *mls.EncryptedGroupSecrets, error) {
	// All entries are looked up in one catalog transaction: the decoder
	// caps them at mls.MaxWelcomeSecrets.
	refs := make([][]byte, len(w.Secrets))
	for i := range w.Secrets {
		refs[i] = w.Secrets[i].NewMember
	}
	found, err := store.ByKeyPackageRefs(refs)
	if err != nil {
		return nil, nil, err
	}
	for i, r := range found {
		if r == nil {
			continue
		}
		if mayUse != nil && !mayUse(r) {
			if denied != nil {
				denied(r)
			}
			continue // another owner's KeyPackage: as if it were not ours
		}
		return r, &w.Secrets[i], nil
	}
	return nil, nil, ErrNoEntry
}

// OpenWelcome opens entry of w with init key rec: the group secrets and,
// when the Welcome needs no PSK, the GroupInfo. The GroupInfo is decrypted
// before the init key is consumed, so a Welcome whose GroupInfo does not
// open (a *GroupInfoError) costs the caller nothing. A non-last-resort
// init key is consumed on success.
func OpenWelcome(ctx context.Context, store *keystore.Store, su *mls.Suite, w *mls.Welcome, entry *mls.EncryptedGroupSecrets, rec *keystore.Record) (*mls.GroupSecrets, *mls.GroupInfo, error) {
	var gs *mls.GroupSecrets
	var gi *mls.GroupInfo
	_, err := store.UseInitKey(ctx, rec.ID, func(k any) error {
		var err error
		if gs, err = su.OpenGroupSecrets(w, entry, k); err != nil {
			return err
		}
		if len(gs.PSKs) == 0 {
			if gi, err = su.DecryptGroupInfo(w, gs, nil); err != nil {
				return &GroupInfoError{err}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return gs, gi, nil
}
