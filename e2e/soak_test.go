package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// sealWelcome is the group's side of adding a KeyPackage, enough for
// OpenWelcome: GroupSecrets encrypted to the KeyPackage's init key, and a
// GroupInfo encrypted under the welcome key of §8. (TestOpenWelcome* and
// the interop tests use Welcomes made by ts-mls; the soak makes its own so
// that thousands cost no Node.js start each.)
func sealWelcome(su *mls.Suite, kpMsg, ref []byte, epoch uint64) ([]byte, error) {
	m, err := mls.UnmarshalMLSMessage(kpMsg)
	if err != nil || m.KeyPackage == nil {
		return nil, fmt.Errorf("KeyPackage: %v", err)
	}
	h := su.HashSize()
	joiner := make([]byte, h)
	rand.Read(joiner)
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{Version: 1, CipherSuite: su.ID, GroupID: []byte("soak group"), Epoch: epoch,
			TreeHash: make([]byte, h), ConfirmedTranscriptHash: make([]byte, h)},
		ConfirmationTag: make([]byte, h), Signer: 0, Signature: make([]byte, 64),
	}
	member, err := su.Extract(joiner, make([]byte, h))
	if err != nil {
		return nil, err
	}
	ws, err := su.DeriveSecret(member, "welcome")
	if err != nil {
		return nil, err
	}
	key, _ := su.ExpandWithLabel(ws, "key", nil, su.AEADKeySize())
	nonce, _ := su.ExpandWithLabel(ws, "nonce", nil, su.AEADNonceSize())
	aead, err := su.NewAEAD(key)
	if err != nil {
		return nil, err
	}
	w := &mls.Welcome{CipherSuite: su.ID, EncryptedGroupInfo: aead.Seal(nil, nonce, gi.Marshal(), nil)}
	kem, ct, err := su.EncryptWithLabel(m.KeyPackage.InitKey, mls.LabelWelcome, w.EncryptedGroupInfo,
		(&mls.GroupSecrets{JoinerSecret: joiner}).Marshal())
	if err != nil {
		return nil, err
	}
	w.Secrets = []mls.EncryptedGroupSecrets{{NewMember: ref, KEMOutput: kem, Ciphertext: ct}}
	return mls.WelcomeMessage(w), nil
}

// TestSoak runs 16 clients, each on its own connection, through rounds of
// sign, keypackage-create, open-welcome, decrypt (then delete the leaf
// key, as a member leaving the group would) and list, and checks that
// nothing failed, that the daemon's memory and goroutines stayed flat
// between the first and the last tenth, and that catalog, token and audit
// log agree afterwards. The CI run is short; MLSKEYD_SOAK=1 runs 1000
// operations per client (MLSKEYD_SOAK_OPS=N for another count). Bounds
// are generous and nothing depends on timing.
func TestSoak(t *testing.T) {
	const clients = 16
	opsPerClient := 25
	if os.Getenv("MLSKEYD_SOAK") == "1" {
		opsPerClient = 1000
		if n, err := strconv.Atoi(os.Getenv("MLSKEYD_SOAK_OPS")); err == nil && n > 0 {
			opsPerClient = n
		}
	}
	opsPerClient -= opsPerClient % 5 // whole rounds
	state := t.TempDir()
	msock := filepath.Join(state, "metrics.sock")
	d := startDaemon(t, state, "--metrics-listen", "unix:"+msock, "--log-level", "info")
	ctx := context.Background()

	type kpRec struct {
		suite          *mls.Suite
		msg, ref       []byte
		initID, leafID string
		leafPub        []byte
	}
	type worker struct {
		c       *client.Client
		suite   *mls.Suite
		keyID   string
		content []byte
	}
	workers := make([]*worker, clients)
	for i := range workers {
		cl, err := client.Dial(ctx, d.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		suite := uint16(1 + i%2) // X25519/Ed25519 and P-256
		su, _ := mls.LookupSuite(mls.CipherSuite(suite))
		k, err := cl.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: uint32(suite)})
		if err != nil {
			t.Fatal(err)
		}
		workers[i] = &worker{c: cl, suite: su, keyID: k.GetId(),
			content: tbs(t, "FramedContentTBS", suite, k.GetPublicKey(), "soak "+strconv.Itoa(i))}
	}

	total := int64(clients * opsPerClient)
	var done atomic.Int64
	type sample struct{ rss, heap, goroutines float64 }
	samples := make([]sample, 0, 11)
	sampleNow := func() sample {
		text := scrape(t, msock)
		return sample{metricValue(text, "process_resident_memory_bytes"), metricValue(text, "go_memstats_heap_inuse_bytes"),
			metricValue(text, "go_goroutines")}
	}
	// A sample as each tenth of the operations completes.
	tenth := make(chan struct{}, 10)
	var errMu sync.Mutex
	var errs []string
	fail := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		} else {
			errs[19] = "…"
		}
	}
	var opened, decrypted, calls atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for wi, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var kp *kpRec
			for i := range opsPerClient {
				var err error
				switch i % 5 {
				case 0:
					_, err = w.c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: w.keyID, Label: "FramedContentTBS", Content: w.content})
				case 1:
					var resp *pb.CreateKeyPackagesResponse
					resp, err = w.c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{SignatureKeyId: w.keyID, CipherSuite: uint32(w.suite.ID), Count: 1,
						Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("soak")}}})
					if err == nil {
						c := resp.GetKeyPackages()[0]
						m, perr := mls.UnmarshalMLSMessage(c.GetKeyPackage())
						if perr != nil {
							err = perr
							break
						}
						kp = &kpRec{suite: w.suite, msg: c.GetKeyPackage(), ref: c.GetKeyPackageRef(), initID: c.GetInitKeyId(),
							leafID: c.GetLeafEncryptionKeyId(), leafPub: m.KeyPackage.LeafNode.EncryptionKey}
					}
				case 2:
					if kp == nil {
						break
					}
					var welcome []byte
					if welcome, err = sealWelcome(kp.suite, kp.msg, kp.ref, uint64(i)); err != nil {
						break
					}
					var resp *pb.OpenWelcomeResponse
					resp, err = w.c.OpenWelcome(ctx, &pb.OpenWelcomeRequest{Welcome: welcome})
					if err == nil {
						if resp.GetInitKeyId() != kp.initID || !bytes.Equal(resp.GetKeyPackageRef(), kp.ref) {
							err = fmt.Errorf("opened as init key %s, want %s", resp.GetInitKeyId(), kp.initID)
						} else {
							opened.Add(1)
						}
					}
				case 3:
					if kp == nil {
						break
					}
					msg := []byte(fmt.Sprintf("path secret %d/%d", wi, i))
					kem, ct, eerr := kp.suite.EncryptWithLabel(kp.leafPub, "UpdatePathNode", []byte("group context"), msg)
					if eerr != nil {
						err = eerr
						break
					}
					var resp *pb.DecryptWithLabelResponse
					resp, err = w.c.DecryptWithLabel(ctx, &pb.DecryptWithLabelRequest{KeyId: kp.leafID, Label: "UpdatePathNode",
						Context: []byte("group context"), KemOutput: kem, Ciphertext: ct})
					if err == nil {
						if !bytes.Equal(resp.GetPlaintext(), msg) {
							err = fmt.Errorf("decrypted %q, want %q", resp.GetPlaintext(), msg)
						} else {
							decrypted.Add(1)
						}
					}
					if err == nil {
						// The member leaves the group: its leaf key goes, so
						// the token holds as many keys at the end as at the
						// start and the soak measures a steady state.
						_, err = w.c.DeleteKey(ctx, &pb.DeleteKeyRequest{Id: kp.leafID})
						calls.Add(1)
						kp = nil
					}
				case 4:
					_, err = w.c.ListKeys(ctx, &pb.ListKeysRequest{Role: pb.KeyRole_KEY_ROLE_SIGNATURE, PageSize: 10})
				}
				calls.Add(1)
				if err != nil {
					fail("client %d op %d: %v", wi, i, err)
				}
				if n := done.Add(1); n%(total/10) == 0 {
					// Let the monitor sample while the calls go on.
					tenth <- struct{}{}
				}
			}
		}()
	}
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		for range 10 {
			<-tenth
			samples = append(samples, sampleNow())
		}
	}()
	wg.Wait()
	<-monitorDone
	elapsed := time.Since(start)
	if len(errs) > 0 {
		t.Fatalf("%d clients × %d operations: errors:\n%s", clients, opsPerClient, strings.Join(errs, "\n"))
	}
	rounds := int64(clients * opsPerClient / 5)
	if opened.Load() != rounds || decrypted.Load() != rounds {
		t.Fatalf("opened %d Welcomes and decrypted %d times, want %d each", opened.Load(), decrypted.Load(), rounds)
	}
	first, last := samples[0], samples[len(samples)-1]
	t.Logf("%d clients × %d operations = %d calls in %v (%.0f calls/s); RSS %.1f → %.1f MiB, Go heap in use %.1f → %.1f MiB, goroutines %.0f → %.0f (first → last tenth)",
		clients, opsPerClient, calls.Load(), elapsed.Round(time.Millisecond), float64(calls.Load())/elapsed.Seconds(),
		first.rss/(1<<20), last.rss/(1<<20), first.heap/(1<<20), last.heap/(1<<20), first.goroutines, last.goroutines)
	var rss []string
	for _, s := range samples {
		rss = append(rss, fmt.Sprintf("%.1f", s.rss/(1<<20)))
	}
	t.Logf("RSS at each tenth (MiB): %s", strings.Join(rss, " "))
	// Mean latency per method, for docs/performance.md.
	text := scrape(t, msock)
	for _, m := range []string{"SignWithLabel", "CreateKeyPackages", "OpenWelcome", "DecryptWithLabel", "DeleteKey", "ListKeys"} {
		sel := `{method="mlskey.v1.KeyService/` + m + `"}`
		if n := metricValue(text, "mlskeyd_grpc_call_duration_seconds_count"+sel); n > 0 {
			t.Logf("%-18s %6.0f calls, mean %.1f ms", m, n, 1000*metricValue(text, "mlskeyd_grpc_call_duration_seconds_sum"+sel)/n)
		}
	}
	// Flat, generously: a leak of a goroutine or a few KiB per call would
	// pass these only over far fewer calls than the soak makes.
	if last.goroutines > first.goroutines*1.5+20 {
		t.Errorf("goroutines grew from %.0f to %.0f", first.goroutines, last.goroutines)
	}
	if last.rss > first.rss*1.5+64<<20 {
		t.Errorf("RSS grew from %.1f to %.1f MiB", first.rss/(1<<20), last.rss/(1<<20))
	}

	// Every KeyPackage was opened: its init key consumed and destroyed,
	// its leaf key used and deleted; the signature keys are left.
	var init, leaf int
	for _, k := range d.listKeys(t) {
		switch {
		case k.Role == "init" && k.State != "consumed":
			t.Errorf("init key %s is %s after its Welcome was opened", k.ID, k.State)
		case k.Role == "init":
			init++
		case k.Role == "leaf-encryption" && k.State == "destroyed":
			leaf++
		case k.Role == "leaf-encryption":
			t.Errorf("leaf key %s is %s after it was deleted", k.ID, k.State)
		}
	}
	if int64(init) != rounds || int64(leaf) != rounds {
		t.Errorf("%d consumed init keys and %d deleted leaf keys, want %d each", init, leaf, rounds)
	}
	d.stop()
	if n := tokenMatchesCatalog(t, state); n != clients {
		t.Errorf("%d keys active in catalog and token, want the %d signature keys", n, clients)
	}
	files, err := audit.Files(filepath.Join(state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(files...)
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	// One record per call (status and the set-up included), plus the
	// daemon's own.
	if int64(rep.Records) < calls.Load() {
		t.Errorf("%d audit records for %d calls", rep.Records, calls.Load())
	}
}
