package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// refillCount is CreateKeyPackages' refill mode: how many KeyPackages
// bring the owner's unused stock of suite and identity back to
// ensure_target (0 while it is above ensure_min), and how many there are.
// It reads the catalog's counters.
func (s *Service) refillCount(owner string, suite uint16, cred mls.Credential, req *pb.CreateKeyPackagesRequest) (int, int, error) {
	counts, err := s.store.UnusedKeyPackages(owner, suite)
	if err != nil {
		return 0, 0, statusOf("catalog", err)
	}
	identity := mlsops.CredentialIdentity(cred)
	have := 0
	for _, c := range counts {
		if c.Identity == identity {
			have += c.Regular
		}
	}
	if have > int(req.GetEnsureMin()) {
		return 0, have, nil
	}
	return max(int(req.GetEnsureTarget())-have, 0), have, nil
}

func (s *Service) ListKeyPackages(ctx context.Context, req *pb.ListKeyPackagesRequest) (*pb.ListKeyPackagesResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	var suite uint16
	if req.GetCipherSuite() != 0 {
		su, err := lookupSuite("cipher_suite", req.GetCipherSuite())
		if err != nil {
			return nil, err
		}
		suite = uint16(su.ID)
	}
	size, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	owner := ownerString(c.UID)
	entries, next, err := s.store.ListKeyPackages(owner, c.admin, suite, req.GetUnusedOnly(), req.GetPageToken(), size)
	if err != nil {
		return nil, statusOf("catalog", err)
	}
	now := s.opts.Now()
	resp := &pb.ListKeyPackagesResponse{NextPageToken: next}
	for _, e := range entries {
		r := e.Init
		info := &pb.KeyPackageInfo{
			KeyPackageRef: r.KeyPackageRef, CipherSuite: uint32(r.Suite), Identity: []byte(r.Identity),
			State: keyPackageState(r, now), LastResort: r.LastResort, InitKeyId: r.ID,
			LeafEncryptionKeyId: e.LeafID, SignatureKeyId: r.SignatureKeyID, Owner: r.Owner,
			CreatedAt: timestamppb.New(r.CreatedAt),
		}
		if !r.NotAfter.IsZero() {
			info.NotAfter = timestamppb.New(r.NotAfter)
		}
		resp.KeyPackages = append(resp.KeyPackages, info)
	}
	var counts []keystore.UnusedCount
	if c.admin {
		counts, err = s.store.AllUnusedKeyPackages(suite)
	} else {
		counts, err = s.store.UnusedKeyPackages(owner, suite)
	}
	if err != nil {
		return nil, statusOf("catalog", err)
	}
	for _, u := range counts {
		resp.Unused = append(resp.Unused, &pb.UnusedKeyPackages{Owner: u.Owner, CipherSuite: uint32(u.Suite),
			Identity: []byte(u.Identity), Unused: uint32(u.Regular), LastResort: uint32(u.LastResort)})
	}
	return resp, nil
}

// keyPackageState derives a KeyPackage's state from its init key: expired
// once past not_after even before the sweep has destroyed its keys.
func keyPackageState(r *keystore.Record, now time.Time) pb.KeyPackageState {
	switch {
	case r.State == keystore.StateConsumed:
		return pb.KeyPackageState_KEY_PACKAGE_STATE_CONSUMED
	case r.State == keystore.StateActive && (r.NotAfter.IsZero() || now.Before(r.NotAfter)):
		return pb.KeyPackageState_KEY_PACKAGE_STATE_UNUSED
	case r.State == keystore.StateActive, keystore.Expired(r):
		return pb.KeyPackageState_KEY_PACKAGE_STATE_EXPIRED
	}
	return pb.KeyPackageState_KEY_PACKAGE_STATE_DELETED
}

func (s *Service) DeleteKeyPackage(ctx context.Context, req *pb.DeleteKeyPackageRequest) (*pb.Key, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	ref := req.GetKeyPackageRef()
	if len(ref) == 0 || len(ref) > 64 {
		return nil, invalid("key_package_ref", "%d bytes, want 1..64", len(ref))
	}
	r, err := s.store.ByKeyPackageRef(ref)
	if err == nil && !c.mayUse(r) {
		noteDenied(ctx, "KeyPackage belongs to "+r.Owner)
		err = fmt.Errorf("KeyPackageRef %x: %w", ref, keystore.ErrNotFound) // as if it were not ours
	}
	if err != nil {
		return nil, statusOf("key_package_ref", err)
	}
	if !r.Live() {
		return nil, status.Errorf(codes.FailedPrecondition, "key_package_ref: KeyPackage %x is %s, not unused", ref,
			strings.TrimPrefix(strings.ToLower(keyPackageState(r, s.opts.Now()).String()), "key_package_state_"))
	}
	out, cascaded, err := s.store.Delete(ctx, r.ID, true)
	if err != nil {
		return nil, statusOf("key_package_ref", err)
	}
	noteKeys(ctx, out.ID)
	for _, k := range cascaded {
		noteKeys(ctx, k.ID)
	}
	return keyToPB(out), nil
}
