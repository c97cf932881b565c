package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/server"
)

// These tests run commands in-process against the fake server.

func mustRun(t *testing.T, sock, stdin string, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, sock, stdin, args...)
	if code != 0 || stderr != "" {
		t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
	}
	return stdout
}

func TestStatusCommand(t *testing.T) {
	_, sock := startFake(t)
	out := mustRun(t, sock, "", "status")
	for _, want := range []string{
		"backend:            fake\n",
		"device:             test device\n",
		"version:            0.0.0-test\n",
		"installation:       00112233445566778899aabbccddeeff\n",
		"missing keys:       1 (0190aa); retire with 'mlskeyctl repair --retire-missing' once the device is known to be right\n",
		"stray device keys:  0\n",
		"SUITE  NAME                                          SIGNATURE  INIT     LEAF ENCRYPTION\n",
		"1      MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519  hardware   wrapped  sealed\n",
		"4      MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448      -          sealed   sealed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, sock, "", "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Backend != "fake" || len(st.Suites) != 2 || st.Suites[1].Signature != nil {
		t.Errorf("status --json: %v\n%s", err, out)
	}
}

func TestKeyCommands(t *testing.T) {
	fake, sock := startFake(t)

	out := mustRun(t, sock, "", "key", "create", "--suite", "MLS_256_DHKEMP384_AES256GCM_SHA384_P384")
	for _, want := range []string{
		"id:          sig-1\n",
		"suite:       7 (MLS_256_DHKEMP384_AES256GCM_SHA384_P384)\n",
		"role:        signature\n",
		"state:       active\n",
		"protection:  hardware\n",
		"public key:  " + strings.Repeat("ab", 32) + "\n",
		"created:     2026-01-02T03:04:05Z\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("key create output lacks %q:\n%s", want, out)
		}
	}

	out = mustRun(t, sock, "", "key", "show", "init-1", "--json")
	var k keyJSON
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.ID != "init-1" || k.LastResort == nil || !*k.LastResort || k.KeyPackageRef != "feed" {
		t.Errorf("key show --json: %v\n%s", err, out)
	}

	out = mustRun(t, sock, "", "key", "delete", "sig-1", "--json")
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.State != "destroyed" || k.RetiredAt == "" {
		t.Errorf("key delete --json: %v\n%s", err, out)
	}

	// key list pages through all three pages and passes the filters.
	out = mustRun(t, sock, "", "--json", "key", "list", "--role", "leaf-encryption", "--state", "active", "--suite", "0x0001")
	var keys []keyJSON
	if err := json.Unmarshal([]byte(out), &keys); err != nil || len(keys) != 3 || keys[2].ID != "leaf-1" || keys[2].LastResort != nil {
		t.Errorf("key list --json: %v\n%s", err, out)
	}
	reqs := fake.listRequests()
	if len(reqs) != 3 {
		t.Fatalf("%d ListKeys calls, want 3", len(reqs))
	}
	for _, r := range reqs {
		if r.GetRole() != mlskeyv1.KeyRole_KEY_ROLE_LEAF_ENCRYPTION || r.GetState() != mlskeyv1.KeyState_KEY_STATE_ACTIVE || r.GetCipherSuite() != 1 {
			t.Errorf("ListKeys request %v", r)
		}
	}
	out = mustRun(t, sock, "", "key", "list")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[2], "init-1  1      init") {
		t.Errorf("key list:\n%s", out)
	}
	if r := fake.listRequests()[0]; r.GetRole() != 0 || r.GetState() != 0 || r.GetCipherSuite() != 0 {
		t.Errorf("unfiltered ListKeys request %v", r)
	}

	code, stdout, stderr := runCLI(t, sock, "", "key", "show", "abc")
	if code != 1 || stdout != "" || stderr != "mlskeyctl: not found: key \"abc\" not found\n" {
		t.Errorf("key show abc: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, sock, "", "key", "create", "--suite", "9")
	if code != 1 || stderr != "mlskeyctl: invalid argument: cipher suite 9 is not supported by this device\n" {
		t.Errorf("key create --suite 9: exit %d, stderr %q", code, stderr)
	}
}

func TestSignCommand(t *testing.T) {
	_, sock := startFake(t)
	content := "some TBS\x00\xff"
	want := hex.EncodeToString(fakeSignature("LeafNodeTBS", []byte(content)))

	out := mustRun(t, sock, content, "sign", "--key", "sig-1", "--label", "LeafNodeTBS")
	if out != want+"\n" {
		t.Errorf("sign from stdin: %q, want %q", out, want)
	}
	file := filepath.Join(t.TempDir(), "tbs")
	os.WriteFile(file, []byte(content), 0o600)
	out = mustRun(t, sock, "ignored", "sign", "--key", "sig-1", "--label", "LeafNodeTBS", "--in", file, "--json")
	if out != "{\n  \"signature\": \""+want+"\"\n}\n" {
		t.Errorf("sign --in --json: %q", out)
	}

	code, _, stderr := runCLI(t, sock, "", "sign", "--key", "sig-1", "--label", "x", "--in", filepath.Join(t.TempDir(), "absent"))
	if code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("sign --in absent: exit %d, stderr %q", code, stderr)
	}
	checkOneErrorLine(t, stderr)

	start := time.Now()
	code, _, stderr = runCLI(t, sock, "", "sign", "--key", "slow", "--label", "x", "--timeout", "200ms")
	if code != 1 || !strings.HasPrefix(stderr, "mlskeyctl: deadline exceeded: no answer from mlskeyd") {
		t.Errorf("sign with timeout: exit %d, stderr %q", code, stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("--timeout 200ms took %v", d)
	}
}

func TestKeyPackageCommand(t *testing.T) {
	fake, sock := startFake(t)
	dir := t.TempDir()

	// Text lines, and the KeyPackages in a file.
	out := mustRun(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "alice", "--count", "2",
		"--last-resort", "--lifetime", "30d", "--out", filepath.Join(dir, "kp.bin"))
	if want := "aa00 init=init-0 sig=sig-new\naa01 init=init-1 sig=sig-new\n"; out != want {
		t.Errorf("keypackage create output %q, want %q", out, want)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "kp.bin"))
	if want := []byte{0, 1, 0, 5, 0, 0, 1, 0, 5, 1}; !bytes.Equal(got, want) {
		t.Errorf("--out file %x, want %x", got, want)
	}
	r := fake.lastKeyPackageRequest()
	if r.GetCipherSuite() != 1 || r.GetCount() != 2 || !r.GetLastResort() || r.GetLifetime().AsDuration() != 30*24*time.Hour ||
		string(r.GetCredential().GetBasicIdentity()) != "alice" || r.GetSignatureKeyId() != "" {
		t.Errorf("CreateKeyPackages request %v", r)
	}

	// JSON, X.509 credential, suite from the signature key.
	pemFile := filepath.Join(dir, "chain.pem")
	os.WriteFile(pemFile, append(
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("leaf")}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("ca")})...), 0o600)
	out = mustRun(t, sock, "", "keypackage", "create", "--signature-key", "sig-1", "--x509-chain", pemFile, "--json")
	var kps []map[string]string
	if err := json.Unmarshal([]byte(out), &kps); err != nil || len(kps) != 1 {
		t.Fatalf("keypackage create --json: %v\n%s", err, out)
	}
	want := map[string]string{"key_package_ref": "aa00", "init_key_id": "init-0", "leaf_encryption_key_id": "leaf-0",
		"signature_key_id": "sig-1", "key_package": "0001000500"}
	for k, v := range want {
		if kps[0][k] != v || len(kps[0]) != len(want) {
			t.Errorf("keypackage create --json: %v, want %v", kps[0], want)
			break
		}
	}
	r = fake.lastKeyPackageRequest()
	certs := r.GetCredential().GetX509().GetCertificates()
	if r.GetCipherSuite() != 1 || r.GetSignatureKeyId() != "sig-1" || len(certs) != 2 || string(certs[0]) != "leaf" ||
		r.GetLifetime() != nil || r.GetCount() != 1 {
		t.Errorf("CreateKeyPackages request %v", r)
	}

	// --out - writes the KeyPackages alone to stdout.
	out = mustRun(t, sock, "", "keypackage", "create", "--suite", "1", "--identity", "a", "--out", "-")
	if out != "\x00\x01\x00\x05\x00" {
		t.Errorf("--out -: %q", out)
	}

	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}), 0o600)
	code, _, stderr := runCLI(t, sock, "", "keypackage", "create", "--suite", "1", "--x509-chain", pemFile)
	if code != 1 || !strings.Contains(stderr, "PRIVATE KEY") {
		t.Errorf("PEM with a private key: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, sock, "", "keypackage", "create", "--signature-key", "nope", "--identity", "a")
	if code != 1 || stderr != "mlskeyctl: not found: key \"nope\" not found\n" {
		t.Errorf("unknown --signature-key: exit %d, stderr %q", code, stderr)
	}
}

func TestWelcomeCommand(t *testing.T) {
	_, sock := startFake(t)
	out := mustRun(t, sock, "\x00\x01\x00\x03\x00", "welcome", "open")
	want := "key package ref:  aa00\ninit key:         init-0\ncipher suite:     1 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)\n" +
		"group id:         67726f7570\nepoch:            7\n"
	if out != want {
		t.Errorf("welcome open:\n%s\nwant\n%s", out, want)
	}
	file := filepath.Join(t.TempDir(), "welcome")
	os.WriteFile(file, []byte("\x00\x01\x00\x03\x50"), 0o600)
	out = mustRun(t, sock, "", "welcome", "open", "--in", file, "--json")
	var w welcomeJSON
	if err := json.Unmarshal([]byte(out), &w); err != nil || w.PathSecret != nil || len(w.PSKs) != 1 || w.PSKs[0].PSKNonce != "0505" {
		t.Errorf("welcome open --json: %v\n%s", err, out)
	}
	code, _, stderr := runCLI(t, sock, "garbage", "welcome", "open")
	if code != 1 || stderr != "mlskeyctl: invalid argument: not a Welcome MLSMessage\n" {
		t.Errorf("bad Welcome: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, sock, "", "welcome", "open")
	if code != 1 || stderr != "mlskeyctl: empty Welcome\n" {
		t.Errorf("empty Welcome: exit %d, stderr %q", code, stderr)
	}
}

// An input over the daemon's limit is refused before it is sent, naming
// the field, not by gRPC's message-size check.
func TestOversizeInputIsAFieldError(t *testing.T) {
	_, sock := startFake(t)
	big := strings.Repeat("x", server.MaxWelcomeSize+1)
	code, _, stderr := runCLI(t, sock, big, "welcome", "open")
	if code != 1 || !strings.Contains(stderr, "welcome: more than 4194304 bytes, over the daemon's limit") {
		t.Errorf("oversize Welcome: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, sock, strings.Repeat("x", server.MaxContentSize+1), "sign", "--key", "sig-1", "--label", "FramedContentTBS")
	if code != 1 || !strings.Contains(stderr, "content: more than 1048576 bytes") {
		t.Errorf("oversize content: exit %d, stderr %q", code, stderr)
	}
}

// A log pruned by --audit-keep verifies with --from-rotation; without it,
// the error names the flag, not a Go API.
func TestAuditVerifyFromRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{Sync: audit.SyncNever, MaxSize: 2000, Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if err := l.Append(audit.Record{Operation: "SignWithLabel", Outcome: audit.OutcomeOK}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	code, _, stderr := runCLI(t, "", "", "audit", "verify", path)
	if code != 1 || !strings.Contains(stderr, "--from-rotation") || strings.Contains(stderr, "AllowNonGenesisStart") {
		t.Errorf("pruned log without --from-rotation: exit %d, %q", code, stderr)
	}
	out := mustRun(t, "", "", "audit", "verify", "--from-rotation", path)
	if !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "as the log recorded") {
		t.Errorf("--from-rotation: %q", out)
	}
}

// A suite the daemon's policy forbids reads "policy", not as available.
func TestStatusShowsSuitesRefusedByPolicy(t *testing.T) {
	var out bytes.Buffer
	c := &cli{stdout: &out}
	err := c.printStatus(&mlskeyv1.GetInfoResponse{Backend: "b", Suites: []*mlskeyv1.SuiteSupport{
		{CipherSuite: 2, Name: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", RefusedByPolicy: true},
	}})
	if err != nil || !strings.Contains(out.String(), "2      MLS_128_DHKEMP256_AES128GCM_SHA256_P256  policy     policy  policy") {
		t.Errorf("status: %v\n%s", err, out.String())
	}
	out.Reset()
	c.g.json = true
	if err := c.printStatus(&mlskeyv1.GetInfoResponse{Suites: []*mlskeyv1.SuiteSupport{{CipherSuite: 2, RefusedByPolicy: true}}}); err != nil || !strings.Contains(out.String(), `"refused_by_policy": true`) {
		t.Errorf("status --json: %v\n%s", err, out.String())
	}
}

func TestRepairCommand(t *testing.T) {
	_, sock := startFake(t)
	if out := mustRun(t, sock, "", "repair"); out != "stray device keys: 1 (st-1)\nmissing keys: 1 (0190aa)\n" {
		t.Errorf("repair without flags:\n%s", out)
	}
	out := mustRun(t, sock, "", "repair", "--destroy-strays", "--retire-missing")
	want := "destroyed strays: 1 (st-1)\nretired missing keys: 1 (0190aa)\nstray device keys: 0\nmissing keys: 0\n"
	if out != want {
		t.Errorf("repair:\n%s\nwant\n%s", out, want)
	}
	var r repairJSON
	if err := json.Unmarshal([]byte(mustRun(t, sock, "", "repair", "--retire-missing", "--json")), &r); err != nil ||
		len(r.RetiredMissing) != 1 || r.DestroyedStrays == nil || len(r.StrayKeyIDs) != 1 {
		t.Errorf("repair --json: %+v %v", r, err)
	}
	if code, _, stderr := runCLI(t, sock, "", "repair", "extra"); code != 2 {
		t.Errorf("repair with an argument: exit %d %s", code, stderr)
	}
}

// TestAuditVerifyOneFile: the summary of a log that was never rotated
// speaks of one file, not "1 files".
func TestAuditVerifyOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{Sync: audit.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := l.Append(audit.Record{Operation: "SignWithLabel", Outcome: audit.OutcomeOK}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	out := mustRun(t, "", "", "audit", "verify", path)
	if !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, " records in 1 file, seq ") {
		t.Errorf("audit verify of one file: %q", out)
	}
}
