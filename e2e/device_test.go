package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

// Device faults under load: the device disappears while concurrent
// signers and KeyPackage creators use the daemon, and comes back. Every
// call must succeed or fail with UNAVAILABLE; health must say NOT_SERVING
// while the device is gone and SERVING once it is back; afterwards catalog
// and device agree and the audit chain verifies.

func requireP11Kit(t *testing.T) (server, client string) {
	t.Helper()
	server, client = pkcs11.FindP11Kit()
	if server == "" || client == "" {
		if os.Getenv("MLSKEYD_REQUIRE_P11KIT") == "1" {
			t.Fatal("p11-kit-server or p11-kit-client.so not installed (apt-get install p11-kit p11-kit-modules)")
		}
		t.Skip("p11-kit-server or p11-kit-client.so not installed (apt-get install p11-kit p11-kit-modules)")
	}
	return server, client
}

// forwardedDaemon makes a dev SoftHSM token in state, exports it with
// p11-kit-server and starts mlskeyd on it through p11-kit-client.so, as a
// container would get a host token.
func forwardedDaemon(t *testing.T, state string) (*daemon, *pkcs11.P11KitServer, func() *daemon) {
	_, clientModule := requireP11Kit(t)
	// A first dev-mode start creates the token and its PIN file.
	startDaemon(t, state).stop()
	conf := filepath.Join(state, "softhsm", "softhsm2.conf")
	srv, err := pkcs11.StartP11KitServer(filepath.Join(state, "p11kit.sock"), pkcs11.FindSoftHSM(), "mlskeyd-dev", []string{"SOFTHSM2_CONF=" + conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	start := func() *daemon {
		return startDaemonEnv(t, state, []string{pkcs11.P11KitServerAddressEnv + "=" + srv.Address()},
			"--pkcs11-module", clientModule)
	}
	return start(), srv, start
}

type statusJSON struct {
	Device           string `json:"device"`
	DeviceState      string `json:"device_state"`
	DeviceLastError  string `json:"device_last_error"`
	DeviceRecoveries int64  `json:"device_recoveries"`
	Suites           []struct {
		CipherSuite    uint16            `json:"cipher_suite"`
		Signature      *string           `json:"signature"`
		Init           *string           `json:"init"`
		LeafEncryption *string           `json:"leaf_encryption"`
		Notes          map[string]string `json:"notes"`
	} `json:"suites"`
}

func level(p *string) string {
	if p == nil {
		return "-"
	}
	return *p
}

// TestP11KitForwardedToken: behind p11-kit, GetInfo promises only what
// the forwarded token does (the issue: suites reported available whose
// every CreateKeyPackages failed with CKR_MECHANISM_INVALID), and every
// suite it reports works.
func TestP11KitForwardedToken(t *testing.T) {
	t.Parallel()
	d, _, _ := forwardedDaemon(t, t.TempDir())
	var st statusJSON
	d.ctlJSON(t, &st, "status")
	if !strings.Contains(st.Device, "seal=hmac-kdf") || st.DeviceState != "ready" {
		t.Fatalf("status: %+v", st)
	}
	out, _, _ := d.ctl("status")
	t.Logf("behind p11-kit:\n%s", out)
	c := d.client()
	for _, s := range st.Suites {
		wantSig := "sealed"
		if s.CipherSuite == 2 || s.CipherSuite == 5 || s.CipherSuite == 7 {
			wantSig = "hardware"
		}
		if level(s.Signature) != wantSig || level(s.Init) != "sealed" || level(s.LeafEncryption) != "sealed" {
			t.Errorf("suite %d: %s/%s/%s", s.CipherSuite, level(s.Signature), level(s.Init), level(s.LeafEncryption))
		}
		if s.Notes["init"] == "" || !strings.Contains(s.Notes["init"], "CKM_ECDH1_DERIVE") {
			t.Errorf("suite %d: no reason for sealed init keys: %v", s.CipherSuite, s.Notes)
		}
		// What is reported works.
		if _, err := c.CreateKeyPackages(context.Background(), &pb.CreateKeyPackagesRequest{
			CipherSuite: uint32(s.CipherSuite), Count: 2,
			Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("p11kit")}},
		}); err != nil {
			t.Errorf("suite %d reported available, CreateKeyPackages: %v", s.CipherSuite, err)
		} else if strings.Contains(fmt.Sprint(err), "\n") {
			t.Errorf("multi-line error: %q", err)
		}
	}
}

// faultLoad runs concurrent signers and KeyPackage creators until stop is
// closed. Every failure must be UNAVAILABLE; every signature must verify.
type faultLoad struct {
	ok, unavailable atomic.Int64
	mu              sync.Mutex
	created         []string // init key ids of KeyPackages that were returned
	wg              sync.WaitGroup
	stop            chan struct{}
}

type loadKey struct {
	id      string
	suite   uint16
	pub     []byte
	content []byte
}

func startLoad(t *testing.T, c pb.KeyServiceClient, sigs []loadKey, kpSuites []uint32) *faultLoad {
	l := &faultLoad{stop: make(chan struct{})}
	check := func(what string, err error) bool {
		switch {
		case err == nil:
			l.ok.Add(1)
			return true
		case status.Code(err) == codes.Unavailable:
			if strings.Contains(status.Convert(err).Message(), "\n") {
				t.Errorf("%s: multi-line error %q", what, status.Convert(err).Message())
			}
			l.unavailable.Add(1)
			time.Sleep(10 * time.Millisecond)
		default:
			t.Errorf("%s failed, not with UNAVAILABLE: %v", what, err)
		}
		return false
	}
	for i, k := range sigs {
		su, err := mls.LookupSuite(mls.CipherSuite(k.suite))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			l.wg.Go(func() {
				for !t.Failed() {
					select {
					case <-l.stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					r, err := c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: k.id, Label: "FramedContentTBS", Content: k.content})
					cancel()
					if check(fmt.Sprintf("sign %d", i), err) {
						if err := su.VerifyWithLabel(k.pub, "FramedContentTBS", k.content, r.Signature); err != nil {
							t.Errorf("sign %d: wrong signature: %v", i, err)
						}
					}
				}
			})
		}
	}
	for _, suite := range kpSuites {
		l.wg.Go(func() {
			for !t.Failed() {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				r, err := c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{
					CipherSuite: suite, Count: 2,
					Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("load")}},
				})
				cancel()
				if check(fmt.Sprintf("keypackages suite %d", suite), err) {
					l.mu.Lock()
					for _, kp := range r.KeyPackages {
						l.created = append(l.created, kp.InitKeyId, kp.LeafEncryptionKeyId)
					}
					l.mu.Unlock()
				}
			}
		})
	}
	return l
}

// progress waits until n more calls succeeded.
func (l *faultLoad) progress(t *testing.T, n int64) {
	t.Helper()
	before := l.ok.Load()
	for deadline := time.Now().Add(120 * time.Second); l.ok.Load() < before+n; time.Sleep(10 * time.Millisecond) {
		if t.Failed() {
			t.FailNow()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress: %d calls succeeded, waiting for %d", l.ok.Load()-before, n)
		}
	}
}

func (l *faultLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// waitHealth polls the standard health service until it reports want
// (bounded; no timing is asserted).
func waitHealth(t *testing.T, d *daemon, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	c, err := client.Dial(context.Background(), d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hc := healthpb.NewHealthClient(c.Conn())
	var last string
	for deadline := time.Now().Add(120 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, svc := range []string{"", pb.KeyService_ServiceDesc.ServiceName} {
			r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				last = err.Error()
				break
			}
			last = r.Status.String()
			if r.Status != want {
				break
			}
			if svc != "" {
				return
			}
		}
	}
	// A stuck daemon shows where with its goroutines (Go prints them on
	// SIGQUIT).
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case err := <-d.exited:
		d.exited <- err
	case <-time.After(10 * time.Second):
	}
	t.Fatalf("health %s, waited for %s\n%s", last, want, notDebug(d.log.String()))
}

// notDebug drops the per-call debug lines from a daemon log.
func notDebug(log string) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "level=DEBUG") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// signingKeys makes one signature key per suite and the content to sign.
func signingKeys(t *testing.T, c pb.KeyServiceClient, suites ...uint16) []loadKey {
	var out []loadKey
	for _, s := range suites {
		k, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: uint32(s)})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, loadKey{id: k.Id, suite: s, pub: k.PublicKey, content: tbs(t, mls.LabelFramedContentTBS, s, k.PublicKey, "fault")})
	}
	return out
}

// checkAfter: the daemon serves, status shows the recoveries, every key
// the load was told about exists, and the audit chain verifies.
func checkAfter(t *testing.T, d *daemon, l *faultLoad, outages int) {
	t.Helper()
	var st statusJSON
	d.ctlJSON(t, &st, "status")
	if st.DeviceState != "ready" || st.DeviceRecoveries < int64(outages) {
		t.Fatalf("status after the outages: %+v", st)
	}
	c := d.client()
	for _, id := range l.created {
		k, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: id})
		if err != nil || k.State != pb.KeyState_KEY_STATE_ACTIVE {
			t.Fatalf("key %s from a successful CreateKeyPackages: %v %v", id, k, err)
		}
	}
	out, errOut, code := d.ctl("audit", "verify", filepath.Join(d.state, "audit.log"))
	if code != 0 {
		t.Fatalf("audit verify: exit %d %s %s", code, out, errOut)
	}
	t.Logf("calls ok %d, unavailable %d, keys created %d; status: state %s, recoveries %d, last error %q; %s",
		l.ok.Load(), l.unavailable.Load(), len(l.created), st.DeviceState, st.DeviceRecoveries, st.DeviceLastError, strings.TrimSpace(out))
}

// TestP11KitServerKilled: the p11-kit server forwarding the token (and
// every per-connection child) is killed and restarted under load, twice.
func TestP11KitServerKilled(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	d, srv, start := forwardedDaemon(t, state)
	c := d.client()
	l := startLoad(t, c, signingKeys(t, c, 2, 1), []uint32{2, 1})
	for range 2 {
		l.progress(t, 20)
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, d, healthpb.HealthCheckResponse_NOT_SERVING)
		var st statusJSON
		d.ctlJSON(t, &st, "status")
		if st.DeviceState != "unavailable" || st.DeviceLastError == "" {
			t.Fatalf("status while the token is gone: %+v", st)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, d, healthpb.HealthCheckResponse_SERVING)
	}
	l.progress(t, 20)
	l.finish()
	checkAfter(t, d, l, 2)
	if strings.Contains(d.log.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", d.log)
	}

	// Catalog and token agree: a restart's reconciliation quarantines
	// nothing, finds no stray and no retired key left on the token, and
	// after it the token holds exactly the active hardware keys. The one
	// thing it may destroy is what a batch made just before the token went
	// away: the batch failed, and so did destroying its keys, which the
	// journal leaves to this start (docs/design.md, "Destruction").
	d.stop()
	d2 := start()
	log := d2.log.String()
	if strings.Contains(log, "keystore: quarantined") {
		t.Fatalf("catalog and token disagreed after the outages:\n%s", log)
	}
	m := regexp.MustCompile(`catalog reconciled"? device_keys=(\d+) destroyed_interrupted=(\d+) destroyed_retired=(\d+) strays=(\d+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no reconciliation logged:\n%s", log)
	}
	onDevice, _ := strconv.Atoi(m[1])
	interrupted, _ := strconv.Atoi(m[2])
	if m[3] != "0" || m[4] != "0" {
		t.Fatalf("reconciliation after the outages: %s retired keys left on the token, %s strays\n%s", m[3], m[4], log)
	}
	if hw := countKeys(t, d2.client(), pb.Protection_PROTECTION_HARDWARE); hw != onDevice-interrupted {
		t.Fatalf("%d active hardware keys in the catalog; %d on the token, %d of them from interrupted batches", hw, onDevice, interrupted)
	}
}

func countKeys(t *testing.T, c pb.KeyServiceClient, p pb.Protection) int {
	n, tok := 0, ""
	for {
		r, err := c.ListKeys(context.Background(), &pb.ListKeysRequest{State: pb.KeyState_KEY_STATE_ACTIVE, PageSize: 1000, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range r.Keys {
			if k.Protection == p {
				n++
			}
		}
		if tok = r.NextPageToken; tok == "" {
			return n
		}
	}
}

// TestSwtpmKilled: swtpm is killed and started again under load, twice.
func TestSwtpmKilled(t *testing.T) {
	t.Parallel()
	sw := swtpm.Start(t, t.TempDir())
	state := t.TempDir()
	// With metrics: they show the device down while it is, and count
	// each reconnection.
	msock := filepath.Join(state, "metrics.sock")
	d := startDaemon(t, state, "--backend", "tpm", "--tpm", sw.Device(), "--metrics-listen", "unix:"+msock)
	c := d.client()
	l := startLoad(t, c, signingKeys(t, c, 2, 1), []uint32{2})
	for range 2 {
		l.progress(t, 20)
		sw.Kill()
		waitHealth(t, d, healthpb.HealthCheckResponse_NOT_SERVING)
		if up := metricValue(scrape(t, msock), "mlskeyd_device_up"); up != 0 {
			t.Errorf("mlskeyd_device_up %v while the TPM is gone", up)
		}
		sw.Resume(t)
		waitHealth(t, d, healthpb.HealthCheckResponse_SERVING)
	}
	l.progress(t, 20)
	l.finish()
	checkAfter(t, d, l, 2)
	var st statusJSON
	d.ctlJSON(t, &st, "status")
	text := scrape(t, msock)
	if got := metricValue(text, "mlskeyd_device_reconnects_total"); got < 2 || got != float64(st.DeviceRecoveries) {
		t.Errorf("mlskeyd_device_reconnects_total %v; status says %d recoveries, after 2 outages", got, st.DeviceRecoveries)
	}
	if up := metricValue(text, "mlskeyd_device_up"); up != 1 {
		t.Errorf("mlskeyd_device_up %v after the TPM came back", up)
	}
	if strings.Contains(d.log.String(), "connection unusable after an earlier error") && !strings.Contains(d.log.String(), "serving again") {
		t.Fatalf("the daemon never reconnected:\n%s", d.log)
	}
	// Every hardware key still loads: a restart checks each blob.
	d.stop()
	d2 := startDaemon(t, state, "--backend", "tpm", "--tpm", sw.Device())
	if n := countKeys(t, d2.client(), pb.Protection_PROTECTION_HARDWARE); n == 0 {
		t.Fatal("no hardware keys after the restart")
	}
}

// TestP11KitRefusesCatalogItCannotServe: a catalog made on the token
// directly holds hardware X25519 keys; behind p11-kit (no ECDH) the daemon
// refuses to start, with one line naming the problem.
func TestP11KitRefusesCatalogItCannotServe(t *testing.T) {
	t.Parallel()
	_, clientModule := requireP11Kit(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "direct@example.org")
	d.stop()
	conf := filepath.Join(state, "softhsm", "softhsm2.conf")
	srv, err := pkcs11.StartP11KitServer(filepath.Join(state, "p11kit.sock"), pkcs11.FindSoftHSM(), "mlskeyd-dev", []string{"SOFTHSM2_CONF=" + conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	cmd := exec.Command(filepath.Join(binDir, "mlskeyd"), "--dev", "--state-dir", state, "--pkcs11-module", clientModule)
	cmd.Env = append(cleanEnv(), pkcs11.P11KitServerAddressEnv+"="+srv.Address())
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("mlskeyd did not exit\n%s", out)
	}
	if err == nil {
		t.Fatalf("mlskeyd started on a token that cannot serve its catalog\n%s", out)
	}
	var last string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		last = l
	}
	named := false
	for _, id := range []string{kps[0].InitKeyID, kps[0].LeafEncryptionKeyID, kps[0].SignatureKeyID} {
		named = named || strings.Contains(last, id)
	}
	if !strings.HasPrefix(last, "mlskeyd: ") || !named || !strings.Contains(last, "not supported by the device") {
		t.Fatalf("start-up error is not one line naming the key or algorithm:\n%s", out)
	}
	t.Log(last)
}
