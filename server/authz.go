package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/mlskeyd/mlskeyd/keystore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Access says who administers the daemon. Admins see and use every key
// and may create keys for another owner; everyone else only their own.
type Access struct {
	AdminUIDs []uint32
	AdminGIDs []uint32
}

// caller is the identity a request runs under.
type caller struct {
	PeerInfo
	admin bool
}

func (a Access) isAdmin(p PeerInfo) bool {
	if slices.Contains(a.AdminUIDs, p.UID) || slices.Contains(a.AdminGIDs, p.GID) {
		return true
	}
	for _, g := range p.Groups {
		if slices.Contains(a.AdminGIDs, g) {
			return true
		}
	}
	return false
}

// callerOf returns the request's caller. Requests reach handlers only
// through PeerCredentials, which the authenticate interceptor checked.
func (s *Service) callerOf(ctx context.Context) (caller, error) {
	p, ok := PeerFromContext(ctx)
	if !ok {
		return caller{}, status.Error(codes.Unauthenticated, "caller: no peer credentials")
	}
	return caller{PeerInfo: p, admin: s.opts.Access.isAdmin(p)}, nil
}

func ownerString(uid uint32) string { return fmt.Sprintf("uid:%d", uid) }

func (c caller) mayUse(r *keystore.Record) bool {
	return c.admin || r.Owner == ownerString(c.UID)
}

// errNoKey is the answer for a key that does not exist and for one the
// caller may not use alike, so key ids cannot be probed.
func errNoKey(field, id string) error {
	return statusOf(field, fmt.Errorf("key %q: %w", id, keystore.ErrNotFound))
}

// key returns a key the caller may use.
func (s *Service) key(ctx context.Context, field, id string) (*keystore.Record, caller, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, c, err
	}
	if err := checkKeyID(field, id); err != nil {
		return nil, c, err
	}
	// Key ids are hex; one copied from a tool that prints hex in upper
	// case names the same key.
	id = strings.ToLower(id)
	r, err := s.store.Get(id)
	if err != nil {
		return nil, c, statusOf(field, err)
	}
	if !c.mayUse(r) {
		noteDenied(ctx, "key belongs to "+r.Owner)
		return nil, c, errNoKey(field, id)
	}
	return r, c, nil
}

// newKeyOwner is the owner of keys a request creates: the caller, or the
// uid an admin names.
func (c caller) newKeyOwner(requested *uint32) (string, error) {
	if requested == nil {
		return ownerString(c.UID), nil
	}
	if !c.admin {
		return "", status.Error(codes.PermissionDenied, "owner_uid: only admins may create keys for another owner")
	}
	return ownerString(*requested), nil
}
