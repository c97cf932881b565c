package e2e

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

func wantCode(t *testing.T, what string, err error, code codes.Code, field string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Errorf("%s: got %v %q, want %v", what, st.Code(), st.Message(), code)
		return
	}
	if field != "" && !strings.HasPrefix(st.Message(), field) {
		t.Errorf("%s: message %q does not name %s", what, st.Message(), field)
	}
}

func createKPs(t testing.TB, c pb.KeyServiceClient, suite uint32, n uint32) *pb.CreateKeyPackagesResponse {
	t.Helper()
	resp, err := c.CreateKeyPackages(context.Background(), &pb.CreateKeyPackagesRequest{
		CipherSuite: suite, Count: n,
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("bob")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// welcomeFor has ts-mls add a KeyPackage to a new group and returns the
// Welcome.
func welcomeFor(t *testing.T, kp []byte) []byte {
	t.Helper()
	var added struct{ Welcome string }
	tsmls(t, "add", map[string]string{"key_package": hex.EncodeToString(kp)}, &added)
	w, err := hex.DecodeString(added.Welcome)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestOpenWelcomeExactlyOnce(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	c := d.client()
	kp := createKPs(t, c, 1, 1).KeyPackages[0]
	welcome := welcomeFor(t, kp.KeyPackage)

	// A tampered Welcome fails to decrypt and consumes nothing.
	bad := append([]byte(nil), welcome...)
	bad[len(bad)-20] ^= 1
	_, err := c.OpenWelcome(context.Background(), &pb.OpenWelcomeRequest{Welcome: bad})
	wantCode(t, "tampered Welcome", err, codes.InvalidArgument, "welcome")

	const n = 32
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, results[i] = c.OpenWelcome(context.Background(), &pb.OpenWelcomeRequest{Welcome: welcome})
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range results {
		switch status.Code(err) {
		case codes.OK:
			wins++
		case codes.FailedPrecondition:
		default:
			t.Errorf("concurrent OpenWelcome: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d concurrent OpenWelcome calls succeeded, want exactly 1", wins, n)
	}
	k, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.InitKeyId})
	if err != nil || k.State != pb.KeyState_KEY_STATE_CONSUMED {
		t.Fatalf("init key: %v %v", k, err)
	}
}

func TestRequestValidation(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	c := d.client()
	ctx := context.Background()
	kps := createKPs(t, c, 1, 1)
	kp := kps.KeyPackages[0]
	sigID := kps.SignatureKey.Id
	p256 := createKPs(t, c, 2, 1).KeyPackages[0]

	_, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 8})
	wantCode(t, "unknown suite", err, codes.InvalidArgument, "cipher_suite")
	_, err = c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{})
	wantCode(t, "no suite", err, codes.InvalidArgument, "cipher_suite")
	_, err = c.GetKey(ctx, &pb.GetKeyRequest{Id: "00000000000000000000000000000000"})
	wantCode(t, "unknown key", err, codes.NotFound, "id")

	_, err = c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: kp.InitKeyId, Label: "LeafNodeTBS"})
	wantCode(t, "sign with an init key", err, codes.InvalidArgument, "key_id")
	_, err = c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: sigID, Label: "Welcome"})
	wantCode(t, "encryption label for signing", err, codes.InvalidArgument, "label")
	_, err = c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: sigID, Label: "FramedContentTBS", Content: make([]byte, 1<<20+1)})
	wantCode(t, "oversize content", err, codes.InvalidArgument, "content")

	for _, n := range []uint32{0, 1001} {
		_, err = c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: n,
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("x")}}})
		wantCode(t, "count", err, codes.InvalidArgument, "count")
	}
	_, err = c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1})
	wantCode(t, "no credential", err, codes.InvalidArgument, "credential")
	_, err = c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 2, Count: 1, SignatureKeyId: sigID,
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("x")}}})
	wantCode(t, "signature key of another suite", err, codes.InvalidArgument, "signature_key_id")
	_, err = c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1, ExtraProposals: []uint32{3},
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("x")}}})
	wantCode(t, "default proposal in capabilities", err, codes.InvalidArgument, "")

	_, err = c.AttestKey(ctx, &pb.AttestKeyRequest{KeyId: sigID})
	wantCode(t, "attest without nonce", err, codes.InvalidArgument, "nonce")
	_, err = c.AttestKey(ctx, &pb.AttestKeyRequest{KeyId: sigID, Nonce: []byte("n")})
	wantCode(t, "attest on PKCS#11", err, codes.Unimplemented, "key_id")
	_, err = c.ActivateCredential(ctx, &pb.ActivateCredentialRequest{KeyId: sigID, EndorsementKey: []byte{1}, Secret: []byte{1}})
	wantCode(t, "activate without a credential", err, codes.InvalidArgument, "credential_blob")
	_, err = c.ActivateCredential(ctx, &pb.ActivateCredentialRequest{KeyId: sigID, EndorsementKey: []byte{1}, CredentialBlob: []byte{1}, Secret: make([]byte, 4096)})
	wantCode(t, "oversize secret", err, codes.InvalidArgument, "secret")
	_, err = c.ActivateCredential(ctx, &pb.ActivateCredentialRequest{KeyId: sigID, EndorsementKey: []byte{1}, CredentialBlob: []byte{1}, Secret: []byte{1}})
	wantCode(t, "activate on PKCS#11", err, codes.Unimplemented, "credential_blob")

	// DecryptWithLabel: a real round trip, then each kind of bad input.
	leaf, err := c.GetKey(ctx, &pb.GetKeyRequest{Id: kp.LeafEncryptionKeyId})
	if err != nil {
		t.Fatal(err)
	}
	su, _ := mls.LookupSuite(1)
	kem, ct, err := su.EncryptWithLabel(leaf.PublicKey, "UpdatePathNode", []byte("group context"), []byte("path secret"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.DecryptWithLabel(ctx, &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", Context: []byte("group context"), KemOutput: kem, Ciphertext: ct})
	if err != nil || string(pt.GetPlaintext()) != "path secret" {
		t.Fatalf("DecryptWithLabel: %v", err)
	}
	dec := func(what, field string, code codes.Code, req *pb.DecryptWithLabelRequest) {
		t.Helper()
		_, err := c.DecryptWithLabel(ctx, req)
		wantCode(t, what, err, code, field)
	}
	dec("Welcome label", "label", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "Welcome", KemOutput: kem, Ciphertext: ct})
	dec("short kem_output", "kem_output", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", KemOutput: kem[:31], Ciphertext: ct})
	dec("all-zero X25519 kem_output", "kem_output", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", KemOutput: make([]byte, 32), Ciphertext: ct})
	dec("wrong context", "ciphertext", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", Context: []byte("other"), KemOutput: kem, Ciphertext: ct})
	dec("init key", "key_id", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: kp.InitKeyId, Label: "UpdatePathNode", KemOutput: kem, Ciphertext: ct})
	offCurve := make([]byte, 65)
	offCurve[0] = 4
	offCurve[64] = 1
	dec("P-256 point off the curve", "kem_output", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: p256.LeafEncryptionKeyId, Label: "UpdatePathNode", KemOutput: offCurve, Ciphertext: ct})
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	dec("P-256 compressed point", "kem_output", codes.InvalidArgument, &pb.DecryptWithLabelRequest{KeyId: p256.LeafEncryptionKeyId, Label: "UpdatePathNode", KemOutput: peer.PublicKey().Bytes()[:33], Ciphertext: ct})

	ow := func(what, field string, code codes.Code, w []byte) {
		t.Helper()
		_, err := c.OpenWelcome(ctx, &pb.OpenWelcomeRequest{Welcome: w})
		wantCode(t, what, err, code, field)
	}
	ow("empty Welcome", "welcome", codes.InvalidArgument, nil)
	ow("garbage Welcome", "welcome", codes.InvalidArgument, []byte{0, 1, 0, 3, 0xff})
	ow("KeyPackage as Welcome", "welcome", codes.InvalidArgument, kp.KeyPackage)
	ow("trailing bytes", "welcome", codes.InvalidArgument, append(welcomeFor(t, kp.KeyPackage), 0))
	other := createKPs(t, c, 1, 1).KeyPackages[0]
	w := welcomeFor(t, other.KeyPackage)
	if _, err := c.DeleteKey(ctx, &pb.DeleteKeyRequest{Id: other.InitKeyId}); err != nil {
		t.Fatal(err)
	}
	ow("Welcome for a deleted init key", "welcome", codes.FailedPrecondition, w)
	if _, err := c.OpenWelcome(ctx, &pb.OpenWelcomeRequest{Welcome: w}); !strings.Contains(status.Convert(err).Message(), "was deleted") {
		t.Errorf("Welcome for a deleted init key: %v, want it to say the key was deleted", err)
	}

	// Nothing above changed the first KeyPackage's keys.
	for _, id := range []string{kp.InitKeyId, kp.LeafEncryptionKeyId, sigID} {
		k, err := c.GetKey(ctx, &pb.GetKeyRequest{Id: id})
		if err != nil || k.State != pb.KeyState_KEY_STATE_ACTIVE {
			t.Fatalf("key %s after bad requests: %v %v", id, k, err)
		}
	}
}

// countingBackend fails the test if reconciliation has anything to repair.
// It embeds the PKCS#11 backend itself, not the Backend interface, so that
// its capabilities (Lister, Binder, Checker) reach the keystore and the
// second start reconciles and checks the binding for real.
type countingBackend struct {
	*pkcs11.Backend
	mu        sync.Mutex
	destroyed int
}

func (c *countingBackend) Destroy(ctx context.Context, ref []byte) error {
	c.mu.Lock()
	c.destroyed++
	c.mu.Unlock()
	return c.Backend.Destroy(ctx, ref)
}

func TestCrashDuringKeyPackageCreation(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	c := d.client()
	createKPs(t, c, 2, 2)
	baseline := deviceKeyFiles(t, state)

	done := make(chan error, 1)
	go func() {
		_, err := c.CreateKeyPackages(context.Background(), &pb.CreateKeyPackagesRequest{
			CipherSuite: 1, Count: 500,
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("crash")}},
		})
		done <- err
	}()
	// Wait until the daemon is generating keys, then kill it. Where exactly
	// the kill lands does not matter: every point must recover.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && deviceKeyFiles(t, state) < baseline+10 {
		time.Sleep(50 * time.Millisecond)
	}
	d.kill()
	err := <-done
	atKill := deviceKeyFiles(t, state)
	t.Logf("CreateKeyPackages at kill: %v; token objects before restart: %d", err, atKill)

	d = startDaemon(t, state)
	var keys []keyJSON
	d.ctlJSON(t, &keys, "key", "list")
	d.stop()
	afterRestart := deviceKeyFiles(t, state)

	// The restarted daemon reconciled; a second reconciliation must find
	// nothing to repair, and catalog and token must hold the same keys.
	hsm, err := pkcs11.InitSoftHSM(filepath.Join(state, "softhsm"), "mlskeyd-dev")
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := os.ReadFile(filepath.Join(state, "pin"))
	be, err := pkcs11.Open(context.Background(), hsm.Config(strings.TrimSpace(string(pin))))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	cb := &countingBackend{Backend: be}
	st, err := keystore.Open(context.Background(), filepath.Join(state, "catalog.db"), cb, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if cb.destroyed != 0 {
		t.Fatalf("second reconciliation destroyed %d keys", cb.destroyed)
	}
	if strays := st.Strays(); len(strays) != 0 {
		t.Errorf("second reconciliation found %d strays", len(strays))
	}
	if missing, err := st.Missing(); err != nil || len(missing) != 0 {
		t.Errorf("second reconciliation found %d missing keys (%v)", len(missing), err)
	}
	dev, err := be.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	active, _, err := st.List(keystore.Filter{State: keystore.StateActive}, "", 10000)
	if err != nil {
		t.Fatal(err)
	}
	onDevice := map[string]bool{}
	for _, k := range dev {
		onDevice[k.ID] = true
	}
	for _, r := range active {
		if r.Protection != keystore.ProtectionHardware {
			continue // sealed or wrapped: its blob is in the catalog, not on the token
		}
		if !onDevice[r.ID] {
			t.Errorf("active catalog key %s (%s) is not on the token", r.ID, r.Protection)
		}
		delete(onDevice, r.ID)
	}
	if len(onDevice) != 0 {
		t.Errorf("%d token keys are not in the catalog", len(onDevice))
	}
	// The batch is all or nothing: 2 KeyPackages before (5 keys), plus 0 or
	// 1001 from the interrupted call.
	if n := len(active); n != 5 && n != 5+1001 {
		t.Errorf("%d active keys after the crash, want 5 or 1006", n)
	}
	if len(keys) != len(active) {
		t.Errorf("daemon listed %d keys, catalog has %d active", len(keys), len(active))
	}
	// An uncommitted batch's keys were removed on the journal's word, and
	// the audit log says so; a committed one lost nothing.
	destroyed := 0
	for _, r := range readAudit(t, filepath.Join(state, "audit.log")) {
		if r.Operation == "KeystoreDestroyed" && strings.Contains(r.Reason, "interrupted batch") {
			destroyed += 1 + len(r.KeyIDs)
		}
	}
	if (afterRestart < atKill && destroyed == 0) || (len(active) != 5 && destroyed > 0) {
		t.Errorf("%d active keys, token objects %d before the batch, %d at the kill, %d after the restart; %d keys of an interrupted batch destroyed",
			len(active), baseline, atKill, afterRestart, destroyed)
	}
	t.Logf("token objects %d before the batch, %d at the kill, %d after the restart; %d keys of the interrupted batch destroyed",
		baseline, atKill, afterRestart, destroyed)
}

// deviceKeyFiles counts SoftHSM object files in the dev token, a way to see
// key generation progress without opening the token.
func deviceKeyFiles(t *testing.T, state string) int {
	n := 0
	filepath.WalkDir(filepath.Join(state, "softhsm", "tokens"), func(p string, de os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".object") {
			n++
		}
		return nil
	})
	return n
}

// TestHealthAndReflection checks what grpcurl relies on: the standard
// health service and server reflection listing the KeyService.
func TestHealthAndReflection(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	c, err := client.Dial(context.Background(), d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := healthpb.NewHealthClient(c.Conn()).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(c.Conn()).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range resp.GetListServicesResponse().GetService() {
		found = found || s.Name == "mlskey.v1.KeyService"
	}
	if !found {
		t.Fatalf("reflection lists %v", resp.GetListServicesResponse().GetService())
	}
}
