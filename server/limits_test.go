package server

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func maxExtensions(n int) []*pb.Extension {
	// n extensions sharing MaxExtensionsSize.
	var out []*pb.Extension
	for i := range n {
		out = append(out, &pb.Extension{Type: uint32(0xf000 + i), Data: make([]byte, MaxExtensionsSize/n)})
	}
	return out
}

func TestCreateKeyPackagesResponseBound(t *testing.T) {
	svc, ctx := policyService(t, Policy{})
	_, err := svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{
		CipherSuite: 1, Count: 1000, Credential: basicCred(), LeafExtensions: maxExtensions(1),
	})
	wantStatus(t, "1000 KeyPackages of 64 KiB", err, codes.InvalidArgument)
	msg := status.Convert(err).Message()
	for _, want := range []string{"count: 1000 KeyPackages of up to", "extensions 65536+0", "over the limit of 16777216", "ask for at most 248"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	keys, _ := svc.ListKeys(ctx, &pb.ListKeysRequest{})
	if len(keys.Keys) != 0 {
		t.Fatalf("a refused request created %d keys", len(keys.Keys))
	}
}

func TestInFlightPerUID(t *testing.T) {
	e := env(t)
	st, err := processStartTime(int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerInfo{UID: 4242, PID: int32(os.Getpid()), StartTime: st}})
	svc := NewService(e.store, Options{})
	auth := authenticate(svc)
	info := &grpc.UnaryServerInfo{FullMethod: "/mlskey.v1.KeyService/GetKey"}
	release := make(chan struct{})
	var started, wg sync.WaitGroup
	for range MaxInFlightPerUID {
		started.Add(1)
		wg.Go(func() {
			auth(ctx, nil, info, func(context.Context, any) (any, error) {
				started.Done()
				<-release
				return nil, nil
			})
		})
	}
	started.Wait()
	_, err = auth(ctx, nil, info, func(context.Context, any) (any, error) { return nil, nil })
	wantStatus(t, "call over the in-flight limit", err, codes.ResourceExhausted)
	// Another uid is not affected.
	other := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerInfo{UID: 4243, PID: int32(os.Getpid()), StartTime: st}})
	if _, err := auth(other, nil, info, func(context.Context, any) (any, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	close(release)
	wg.Wait()
	if _, err := auth(ctx, nil, info, func(context.Context, any) (any, error) { return nil, nil }); err != nil {
		t.Fatalf("after the calls finished: %v", err)
	}
}

// A Welcome with the most entries the decoder accepts, ours last, is
// opened; its entries are looked up in one catalog transaction.
func TestOpenWelcomeManyEntries(t *testing.T) {
	e := env(t)
	w, err := mls.UnmarshalMLSMessage(e.welcomeFor(t))
	if err != nil {
		t.Fatal(err)
	}
	ours := w.Welcome.Secrets[0]
	w.Welcome.Secrets = nil
	for i := range mls.MaxWelcomeSecrets - 1 {
		ref := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 16)
		w.Welcome.Secrets = append(w.Welcome.Secrets, mls.EncryptedGroupSecrets{NewMember: ref, KEMOutput: ours.KEMOutput, Ciphertext: ours.Ciphertext})
	}
	w.Welcome.Secrets = append(w.Welcome.Secrets, ours)
	resp, err := e.svc.OpenWelcome(e.ctx, &pb.OpenWelcomeRequest{Welcome: mls.WelcomeMessage(w.Welcome)})
	if err != nil || !bytes.Equal(resp.KeyPackageRef, e.kp.KeyPackageRef) {
		t.Fatalf("Welcome of %d entries: %v", mls.MaxWelcomeSecrets, err)
	}
}

// requestBudget is the documented bound on what one request under the
// receive limit may allocate: requestBytesPerInputByte per request byte for
// decoding and checking plus requestConstBytes, and for CreateKeyPackages
// requestResponseFactor per byte of its response (each KeyPackage is
// encoded several times: both TBS to sign and again to verify, the
// signature contents, the ref, the message), which MaxResponseSize bounds:
// at most 24 × 16 MiB + 8 MiB = 392 MiB (1000 KeyPackages with 64 KiB
// fields allocated 1.8 GiB before the response bound).
const (
	requestBytesPerInputByte = 8
	requestConstBytes        = 8 << 20
	requestResponseFactor    = 24
)

func allocatedBy(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestRequestCostBounded is the property test of issue's section 1: the
// costliest requests the limits allow stay within the budget above.
// Measured with runtime.MemStats, not the clock.
func TestRequestCostBounded(t *testing.T) {
	e := env(t)
	su := e.suit
	empty := &mls.Welcome{CipherSuite: 1, EncryptedGroupInfo: []byte{1}}
	for range (MaxWelcomeSize - 100) / 3 {
		empty.Secrets = append(empty.Secrets, mls.EncryptedGroupSecrets{NewMember: []byte{}, KEMOutput: []byte{}, Ciphertext: []byte{}})
	}
	full := &mls.Welcome{CipherSuite: 1, EncryptedGroupInfo: []byte{1}}
	for i := range mls.MaxWelcomeSecrets {
		full.Secrets = append(full.Secrets, mls.EncryptedGroupSecrets{NewMember: bytes.Repeat([]byte{byte(i), byte(i >> 8)}, su.HashSize()/2),
			KEMOutput: make([]byte, su.KEMOutputSize()), Ciphertext: make([]byte, (MaxWelcomeSize-100)/mls.MaxWelcomeSecrets-100)})
	}
	cases := map[string]struct {
		size int
		call func() error
	}{}
	for name, w := range map[string]*mls.Welcome{"Welcome of empty entries": empty, "Welcome of 10,000 entries": full} {
		msg := mls.WelcomeMessage(w)
		cases[name] = struct {
			size int
			call func() error
		}{len(msg), func() error {
			_, err := e.svc.OpenWelcome(e.ctx, &pb.OpenWelcomeRequest{Welcome: msg})
			return err
		}}
	}
	content := make([]byte, MaxContentSize)
	cases["SignWithLabel of 1 MiB"] = struct {
		size int
		call func() error
	}{len(content), func() error {
		_, err := e.svc.SignWithLabel(e.ctx, &pb.SignWithLabelRequest{KeyId: e.sig, Label: "FramedContentTBS", Content: content})
		return err
	}}
	for name, c := range cases {
		got := allocatedBy(func() { _ = c.call() })
		budget := uint64(requestBytesPerInputByte*c.size + requestConstBytes)
		t.Logf("%s: %d request bytes, %d bytes allocated (budget %d)", name, c.size, got, budget)
		if got > budget {
			t.Errorf("%s: allocated %d bytes, over the budget of %d", name, got, budget)
		}
	}

	// CreateKeyPackages with maximal fields: its cost grows with its
	// response, which checkResponseSize bounds; 30 KeyPackages keep the
	// test short on SoftHSM (122 fit the limit).
	svc, ctx := policyService(t, Policy{})
	req := &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 30,
		Credential:     &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: make([]byte, MaxIdentitySize)}},
		LeafExtensions: maxExtensions(1), KeyPackageExtensions: maxExtensions(1)}
	var resp *pb.CreateKeyPackagesResponse
	var err error
	got := allocatedBy(func() { resp, err = svc.CreateKeyPackages(ctx, req) })
	if err != nil {
		t.Fatal(err)
	}
	size := proto.Size(resp)
	budget := uint64(requestResponseFactor*size + requestConstBytes)
	t.Logf("CreateKeyPackages of %d: response %d bytes, %d bytes allocated (budget %d)", req.Count, size, got, budget)
	if got > budget {
		t.Errorf("CreateKeyPackages of %d: response %d bytes, allocated %d (budget %d)", req.Count, size, got, budget)
	}
	mc, _ := svc.credential(req.Credential)
	leaf, _ := extensions("", req.LeafExtensions)
	kpe, _ := extensions("", req.KeyPackageExtensions)
	if est := int(req.Count)*keyPackageSize(mc, mls.Capabilities{}, leaf, kpe) + keyPackageOverhead; size > est {
		t.Errorf("response of %d bytes, over its estimate of %d", size, est)
	}
}

// Extension types used and listed together over the capabilities limit
// are refused before any key is made.
func TestCapabilitiesUnionRefusedEarly(t *testing.T) {
	svc, ctx := policyService(t, Policy{})
	var extra []uint32
	for i := range 600 {
		extra = append(extra, uint32(0x2000+i))
	}
	var exts []*pb.Extension
	for i := range 600 {
		exts = append(exts, &pb.Extension{Type: uint32(0x3000 + i)})
	}
	_, err := svc.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, Credential: basicCred(),
		ExtraExtensions: extra, LeafExtensions: exts})
	wantStatus(t, "1200 extension types", err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "extra_extensions: ") {
		t.Errorf("message %q", msg)
	}
	keys, _ := svc.ListKeys(ctx, &pb.ListKeysRequest{})
	if len(keys.Keys) != 0 {
		t.Fatalf("a refused request created %d keys", len(keys.Keys))
	}
}
