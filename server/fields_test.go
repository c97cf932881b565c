package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestStatusNamesOnlyTheFieldAtFault: a device failure, a cancellation or
// a deadline is no request field's fault, so its status names none.
func TestStatusNamesOnlyTheFieldAtFault(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{&keystore.DeviceError{Op: "generate", Err: errors.New("CKR_DEVICE_ERROR")}, codes.Unavailable, "device generate: CKR_DEVICE_ERROR"},
		{fmt.Errorf("generate: %w", context.Canceled), codes.Canceled, "generate: context canceled"},
		{fmt.Errorf("generate: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "generate: context deadline exceeded"},
		{errors.New("bbolt: disk full"), codes.Internal, "bbolt: disk full"},
		{fmt.Errorf("sign key package: %w", keystore.ErrInternal), codes.Internal, "sign key package: internal error (a panic; the daemon log has the stack)"},
		{fmt.Errorf("key %q: %w", "ab", keystore.ErrNotFound), codes.NotFound, "cipher_suite: key \"ab\": "},
		{fmt.Errorf("no: %w", keystore.ErrPolicy), codes.FailedPrecondition, "cipher_suite: no: "},
	} {
		st, _ := status.FromError(statusOf("cipher_suite", tt.err))
		if st.Code() != tt.code || !strings.HasPrefix(st.Message(), tt.msg) {
			t.Errorf("statusOf(%v) = %v %q, want %v %q…", tt.err, st.Code(), st.Message(), tt.code, tt.msg)
		}
	}
}

// TestCancelledCreateNamesNoField: a request cancelled while the device
// generates its key is not blamed on cipher_suite.
func TestCancelledCreateNamesNoField(t *testing.T) {
	e := env(t)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	_, err := e.svc.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err == nil {
		t.Skip("the store did not look at the cancelled context")
	}
	if st, _ := status.FromError(err); strings.HasPrefix(st.Message(), "cipher_suite") {
		t.Errorf("cancelled create: %v %q names cipher_suite", st.Code(), st.Message())
	}
}

// TestKeyIDsInUpperCase: hex key ids name the same key in either case.
func TestKeyIDsInUpperCase(t *testing.T) {
	e := env(t)
	up := strings.ToUpper(e.sig)
	k, err := e.svc.GetKey(e.ctx, &pb.GetKeyRequest{Id: up})
	if err != nil || k.Id != e.sig {
		t.Fatalf("GetKey(%s): %v %v", up, k, err)
	}
	// Strict content refuses the empty content: the key itself was found.
	_, err = e.svc.SignWithLabel(e.ctx, &pb.SignWithLabelRequest{KeyId: up, Label: "FramedContentTBS"})
	if st, _ := status.FromError(err); st.Code() == codes.NotFound || strings.HasPrefix(st.Message(), "key_id") {
		t.Fatalf("SignWithLabel(%s): %v", up, err)
	}
	_, err = e.svc.GetKey(e.ctx, &pb.GetKeyRequest{Id: strings.ToUpper(e.kp.InitKeyId)})
	if err != nil {
		t.Fatal(err)
	}
	// The wrong role is worded with the right article.
	_, err = e.svc.SignWithLabel(e.ctx, &pb.SignWithLabelRequest{KeyId: strings.ToUpper(e.kp.InitKeyId), Label: "FramedContentTBS"})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "is an init key, not a signature key") {
		t.Fatalf("sign with an init key: %v", err)
	}
	// Deleting by an upper-case id deletes the key itself.
	k, err = e.svc.CreateSignatureKey(e.ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.svc.DeleteKey(e.ctx, &pb.DeleteKeyRequest{Id: strings.ToUpper(k.Id)})
	if err != nil || d.Id != k.Id || d.State != pb.KeyState_KEY_STATE_DESTROYED {
		t.Fatalf("DeleteKey(upper case): %v %v", d, err)
	}
}

// TestLifetimeRange: a lifetime under an hour (0 and 1ns included) is
// refused with the valid range, and creates no key.
func TestLifetimeRange(t *testing.T) {
	e := env(t)
	before, err := e.svc.ListKeys(e.ctx, &pb.ListKeysRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{0, time.Nanosecond, 59 * time.Minute, -time.Hour, 400 * 24 * time.Hour} {
		_, err := e.svc.CreateKeyPackages(e.ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, Lifetime: durationpb.New(d),
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("x")}}})
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "lifetime: ") || !strings.Contains(st.Message(), "valid: 1h0m0s to 8760h0m0s") {
			t.Errorf("lifetime %v: %v %q", d, st.Code(), st.Message())
		}
	}
	after, err := e.svc.ListKeys(e.ctx, &pb.ListKeysRequest{PageSize: 1000})
	if err != nil || len(after.Keys) != len(before.Keys) {
		t.Fatalf("refused requests created keys: %d → %d (%v)", len(before.Keys), len(after.Keys), err)
	}
}

// TestListKeysOwnerFilter: admins list one owner's keys with owner_uid;
// others may name only themselves.
func TestListKeysOwnerFilter(t *testing.T) {
	e := env(t)
	admin := NewService(e.svc.store, Options{Access: Access{AdminUIDs: []uint32{0}}})
	other := uint32(4242)
	k, err := admin.CreateSignatureKey(e.ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1, OwnerUid: &other})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.ListKeys(e.ctx, &pb.ListKeysRequest{OwnerUid: &other})
	if err != nil || len(resp.Keys) != 1 || resp.Keys[0].Id != k.Id {
		t.Fatalf("admin, owner_uid %d: %v %v", other, resp, err)
	}
	all, err := admin.ListKeys(e.ctx, &pb.ListKeysRequest{PageSize: 1000})
	if err != nil || len(all.Keys) < 2 {
		t.Fatalf("admin, no filter: %v %v", all, err)
	}
	// uid 0 is no admin of e.svc: its own keys only, and no one else's.
	self := uint32(0)
	mine, err := e.svc.ListKeys(e.ctx, &pb.ListKeysRequest{OwnerUid: &self, PageSize: 1000})
	if err != nil || len(mine.Keys) != len(all.Keys)-1 {
		t.Fatalf("own keys: %d of %d, %v", len(mine.Keys), len(all.Keys), err)
	}
	_, err = e.svc.ListKeys(e.ctx, &pb.ListKeysRequest{OwnerUid: &other})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.HasPrefix(st.Message(), "owner_uid: ") {
		t.Fatalf("non-admin listing another owner: %v", err)
	}
}
