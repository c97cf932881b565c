package server

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// uidCounter gives each test its own caller uid, so that tests sharing the
// one SoftHSM token do not see each other's keys.
var uidCounter atomic.Uint32

func init() { uidCounter.Store(20000) }

// policyService is a Service with policy p over the shared token, and a
// context for a fresh, non-admin caller.
func policyService(t *testing.T, p Policy) (*Service, context.Context) {
	t.Helper()
	e := env(t)
	uid := uidCounter.Add(1)
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerInfo{UID: uid, PID: int32(os.Getpid())}})
	return NewService(e.store, Options{Policy: p}), ctx
}

func basicCred() *pb.Credential {
	return &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("alice")}}
}

func wantStatus(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

func TestCreateKeyPackagesAppliesAllowedLabels(t *testing.T) {
	// The key may sign group messages only: KeyPackages would make it sign
	// LeafNodeTBS and KeyPackageTBS, which its policy forbids.
	open, ctx := policyService(t, Policy{})
	sig, err := open.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Keys: map[string]KeyPolicy{sig.Id: {AllowedLabels: []string{"FramedContentTBS"}}}}
	svc := NewService(open.store, Options{Policy: p})
	_, err = svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, Credential: basicCred(), SignatureKeyId: sig.Id})
	wantStatus(t, "existing key without LeafNodeTBS", err, codes.PermissionDenied)
	keys, _ := svc.ListKeys(ctx, &pb.ListKeysRequest{})
	if len(keys.Keys) != 1 {
		t.Fatalf("a refused request created keys: %d", len(keys.Keys))
	}
	// The role's list applies to new signature keys too.
	role := NewService(open.store, Options{Policy: Policy{AllowedLabels: map[string][]string{"signature": {"FramedContentTBS", "LeafNodeTBS"}}}})
	_, err = role.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, Credential: basicCred()})
	wantStatus(t, "new key without KeyPackageTBS", err, codes.PermissionDenied)
	// With both labels allowed it works.
	p.Keys[sig.Id] = KeyPolicy{AllowedLabels: []string{"LeafNodeTBS", "KeyPackageTBS"}}
	if _, err := NewService(open.store, Options{Policy: p}).CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{
		CipherSuite: 1, Count: 1, Credential: basicCred(), SignatureKeyId: sig.Id}); err != nil {
		t.Fatal(err)
	}
}

func TestOutstandingLimitCountsLastResortAndRaces(t *testing.T) {
	svc, ctx := policyService(t, Policy{MaxOutstandingKeyPackages: 10})
	sig, err := svc.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Four concurrent requests of 10 against a maximum of 10: one wins.
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range 4 {
		wg.Go(func() {
			_, err := svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 10, Credential: basicCred(), SignatureKeyId: sig.Id})
			if err == nil {
				ok.Add(1)
			} else if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("concurrent request: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d of 4 concurrent requests succeeded, want 1", ok.Load())
	}
	// Last-resort KeyPackages have their own, small limit.
	made := 0
	for range 50 {
		_, err := svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, Credential: basicCred(), SignatureKeyId: sig.Id, LastResort: true})
		if err != nil {
			wantStatus(t, "last resort over the limit", err, codes.ResourceExhausted)
			break
		}
		made++
	}
	if made != DefaultMaxLastResort {
		t.Fatalf("%d last-resort KeyPackages created, want %d", made, DefaultMaxLastResort)
	}
	init, _ := svc.ListKeys(ctx, &pb.ListKeysRequest{Role: pb.KeyRole_KEY_ROLE_INIT})
	if len(init.Keys) != 10+DefaultMaxLastResort {
		t.Fatalf("%d init keys, want %d", len(init.Keys), 10+DefaultMaxLastResort)
	}
}

func TestGetInfoShowsSuitesRefusedByPolicy(t *testing.T) {
	svc, ctx := policyService(t, Policy{AllowedSuites: []uint16{1}})
	info, err := svc.GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range info.Suites {
		refused := s.CipherSuite != 1
		if s.RefusedByPolicy != refused {
			t.Errorf("suite %d: refused_by_policy %v", s.CipherSuite, s.RefusedByPolicy)
		}
		if refused && (s.Signature != pb.Protection_PROTECTION_UNSPECIFIED || s.Init != pb.Protection_PROTECTION_UNSPECIFIED) {
			t.Errorf("suite %d refused by policy but shown available: %v", s.CipherSuite, s)
		}
		if !refused && s.Signature == pb.Protection_PROTECTION_UNSPECIFIED {
			t.Errorf("suite 1 not available")
		}
	}
}
