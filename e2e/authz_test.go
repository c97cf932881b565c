package e2e

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mlskeyd/mlskeyd/audit"
)

// ctlAs runs mlskeyctl as another user against the daemon.
func (d *daemon) ctlAs(uid uint32, args ...string) (string, string, int) {
	return d.ctlAsIn(uid, []byte("content"), args...)
}

func (d *daemon) ctlAsIn(uid uint32, stdin []byte, args ...string) (string, string, int) {
	return d.run(&syscall.Credential{Uid: uid, Gid: uid}, stdin, args...)
}

// sharedDaemon starts a daemon whose socket other users can reach: the
// socket in a world-searchable directory with mode 0666, and the binaries
// executable by all. Tests run as root; the other users are 65534 (nobody)
// and 1001 (made an admin).
func sharedDaemon(t *testing.T, args ...string) *daemon {
	if os.Getuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	sockDir, err := os.MkdirTemp("", "mlskeyd-shared")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	os.Chmod(sockDir, 0o755)
	os.Chmod(binDir, 0o755)
	state := t.TempDir()
	return startDaemon(t, state, append([]string{"--socket", filepath.Join(sockDir, "mlskeyd.sock"), "--socket-mode", "0666"}, args...)...)
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestOwnershipAndAdmins(t *testing.T) {
	d := sharedDaemon(t, "--admin-uids", "1001")
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "root", "--count", "2")
	sig := kps[0].SignatureKeyID
	welcome := welcomeFor(t, mustHex(t, kps[0].KeyPackage))
	wfile := filepath.Join(filepath.Dir(d.socket), "welcome")
	os.WriteFile(wfile, welcome, 0o644)

	// nobody sees none of root's keys, and is told NOT_FOUND exactly as
	// for a key that does not exist.
	out, errOut, code := d.ctlAs(65534, "key", "list", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("nobody's key list: exit %d %q %s", code, out, errOut)
	}
	const missing = "0123456789abcdef0123456789abcdef"
	_, missingErr, _ := d.ctlAs(65534, "key", "show", missing)
	for _, args := range [][]string{
		{"key", "show", sig},
		{"key", "delete", sig},
		{"sign", "--key", sig, "--label", "FramedContentTBS"},
		{"keypackage", "create", "--suite", "1", "--identity", "x", "--signature-key", sig},
		{"key", "attest", sig, "--nonce", "00"},
	} {
		_, errOut, code := d.ctlAs(65534, args...)
		if code != 1 || !strings.Contains(errOut, "not found") {
			t.Errorf("nobody %v: exit %d %q", args, code, errOut)
		}
		if strings.Contains(errOut, "uid:0") || strings.Contains(errOut, "belongs") {
			t.Errorf("nobody %v: the answer reveals the owner: %q", args, errOut)
		}
	}
	if _, errOut, _ := d.ctlAs(65534, "key", "show", sig); strings.ReplaceAll(errOut, sig, missing) != missingErr {
		t.Errorf("root's key and a missing key answer differently: %q vs %q", errOut, missingErr)
	}
	if _, errOut, code := d.ctlAs(65534, "welcome", "open", "--in", wfile); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("nobody opens root's Welcome: exit %d %q", code, errOut)
	}

	// nobody's own key is nobody's, invisible to root (not an admin here).
	out, errOut, code = d.ctlAs(65534, "key", "create", "--suite", "2", "--json")
	if code != 0 {
		t.Fatalf("nobody creates a key: %s", errOut)
	}
	var own keyJSON
	json.Unmarshal([]byte(out), &own)
	if _, _, code := d.ctl("key", "show", own.ID); code != 1 {
		t.Errorf("root sees nobody's key: exit %d", code)
	}
	var rootKeys []keyJSON
	d.ctlJSON(t, &rootKeys, "key", "list")
	for _, k := range rootKeys {
		if k.ID == own.ID {
			t.Error("root's key list shows nobody's key")
		}
	}

	// The admin sees and uses everyone's keys.
	out, errOut, code = d.ctlAs(1001, "key", "list", "--json")
	var all []keyJSON
	if code != 0 || json.Unmarshal([]byte(out), &all) != nil || len(all) != len(rootKeys)+1 {
		t.Fatalf("admin key list: exit %d, %d keys (root has %d): %s", code, len(all), len(rootKeys), errOut)
	}
	var rootSig keyJSON
	d.ctlJSON(t, &rootSig, "key", "show", sig)
	if _, errOut, code := d.ctlAsIn(1001, tbs(t, "FramedContentTBS", 1, mustHex(t, rootSig.PublicKey), "admin"), "sign", "--key", sig, "--label", "FramedContentTBS"); code != 0 {
		t.Fatalf("admin signs with root's key: %s", errOut)
	}
	if _, errOut, code := d.ctlAs(1001, "welcome", "open", "--in", wfile); code != 0 {
		t.Fatalf("admin opens root's Welcome: %s", errOut)
	}

	// An admin may create a key for another owner; nobody else may.
	out, errOut, code = d.ctlAs(1001, "key", "create", "--suite", "1", "--owner-uid", "65534", "--json")
	var given keyJSON
	if code != 0 || json.Unmarshal([]byte(out), &given) != nil {
		t.Fatalf("admin creates a key for nobody: %s", errOut)
	}
	if _, errOut, code := d.ctlAs(65534, "key", "show", given.ID); code != 0 {
		t.Errorf("nobody cannot see the key made for them: %s", errOut)
	}
	if _, errOut, code := d.ctlAs(65534, "key", "create", "--suite", "1", "--owner-uid", "0"); code != 1 || !strings.Contains(errOut, "permission denied") {
		t.Errorf("nobody creates a key for root: exit %d %s", code, errOut)
	}

	// Every denied attempt is in the audit log with the real reason.
	d.stop()
	denied := 0
	for _, r := range readAudit(t, filepath.Join(d.state, "audit.log")) {
		if r.UID == 65534 && r.Outcome == "denied" && strings.Contains(r.Reason, "uid:0") {
			denied++
		}
		if r.UID == 65534 && r.Operation == "SignWithLabel" && r.Outcome != "denied" {
			t.Errorf("nobody's sign recorded as %s", r.Outcome)
		}
	}
	if denied < 6 {
		t.Errorf("%d denied records for nobody, want at least 6", denied)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeConfig(t *testing.T, v any) string {
	t.Helper()
	b, _ := json.Marshal(v)
	f := filepath.Join(t.TempDir(), "mlskeyd.json")
	os.WriteFile(f, b, 0o600)
	return f
}

func TestPolicyLimits(t *testing.T) {
	cfg := writeConfig(t, map[string]any{"policy": map[string]any{
		"allowed_suites":              []int{1, 2},
		"allowed_labels":              map[string]any{"signature": []string{"FramedContentTBS", "LeafNodeTBS", "KeyPackageTBS"}},
		"max_outstanding_keypackages": 3,
		"keypackage_max_lifetime":     "30d",
		"rate_limit":                  map[string]any{"per_second": 0.001, "burst": 40},
	}})
	d := startDaemon(t, t.TempDir(), "--config", cfg)

	if _, errOut, code := d.ctl("key", "create", "--suite", "7"); code != 1 || !strings.Contains(errOut, "permission denied") {
		t.Errorf("suite outside the policy: exit %d %s", code, errOut)
	}
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "a", "--count", "2")
	if _, errOut, code := d.ctl("keypackage", "create", "--suite", "1", "--identity", "a", "--count", "2"); code != 1 || !strings.Contains(errOut, "resource exhausted") {
		t.Errorf("over the outstanding KeyPackage limit: exit %d %s", code, errOut)
	}
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "a", "--last-resort") // last resort is not counted
	if _, errOut, code := d.ctl("keypackage", "create", "--suite", "2", "--identity", "a", "--lifetime", "60d"); code != 1 || !strings.Contains(errOut, "lifetime") {
		t.Errorf("lifetime over the policy's maximum: exit %d %s", code, errOut)
	}
	sig := kps[0].SignatureKeyID
	if _, errOut, code := d.ctlIn([]byte("x"), "sign", "--key", sig, "--label", "GroupInfoTBS"); code != 1 || !strings.Contains(errOut, "permission denied") {
		t.Errorf("label outside the policy: exit %d %s", code, errOut)
	}
	// The rate limit: 40 calls at once, then no more.
	limited := false
	for range 45 {
		if _, errOut, code := d.ctl("key", "show", sig); code != 0 {
			limited = strings.Contains(errOut, "resource exhausted")
			break
		}
	}
	if !limited {
		t.Error("rate limit never reached")
	}
}

func TestAuditLogTamperingAndFailClosed(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "a", "--count", "2")
	for _, label := range []string{"FramedContentTBS", "NotALabel", "GroupInfoTBS"} {
		d.ctlIn([]byte("x"), "sign", "--key", kps[0].SignatureKeyID, "--label", label)
	}
	d.ctl("key", "delete", kps[1].InitKeyID)
	d.stop()
	log := filepath.Join(state, "audit.log")
	if out, errOut, code := d.ctl("audit", "verify", log); code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("audit verify of an intact log: exit %d %s %s", code, out, errOut)
	}
	recs := readAudit(t, log)
	if len(recs) < 5 {
		t.Fatalf("%d audit records", len(recs))
	}
	for _, r := range recs {
		if r.Operation == "SignWithLabel" && r.Label == "" || r.PID == 0 || r.Exe == "" {
			t.Errorf("incomplete record %+v", r)
		}
	}

	orig, _ := os.ReadFile(log)
	lines := strings.SplitAfter(strings.TrimSuffix(string(orig), "\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\n")
	}
	tamper := map[string]func([]string) []string{
		"edited": func(l []string) []string {
			l[2] = strings.Replace(l[2], `"outcome":"`, `"outcome":"x`, 1)
			return l
		},
		"removed":   func(l []string) []string { return append(l[:2], l[3:]...) },
		"inserted":  func(l []string) []string { return append(l[:3], append([]string{l[1]}, l[3:]...)...) },
		"reordered": func(l []string) []string { l[2], l[3] = l[3], l[2]; return l },
	}
	for kind, f := range tamper {
		changed := f(append([]string(nil), lines...))
		file := filepath.Join(t.TempDir(), "audit.log")
		os.WriteFile(file, []byte(strings.Join(changed, "\n")+"\n"), 0o600)
		_, errOut, code := d.ctl("audit", "verify", file)
		if code != 1 || !strings.Contains(errOut, kind) || !strings.Contains(errOut, ":3") && !strings.Contains(errOut, ":4") {
			t.Errorf("%s record: exit %d %q", kind, code, errOut)
		}
	}

	// fail_closed with a log that cannot be written: refused, nothing
	// changed.
	before := len(d.listKeys(t))
	os.Rename(log, log+".saved")
	if err := os.Symlink("/dev/full", log); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, state, "--audit-fail-closed")
	if _, errOut, code := d.ctl("key", "create", "--suite", "2"); code != 1 || !strings.Contains(errOut, "audit") {
		t.Errorf("create with an unwritable fail-closed log: exit %d %q", code, errOut)
	}
	if _, errOut, code := d.ctl("keypackage", "create", "--suite", "2", "--identity", "a"); code != 1 || !strings.Contains(errOut, "audit") {
		t.Errorf("keypackage create with an unwritable fail-closed log: exit %d %q", code, errOut)
	}
	d.stop()
	os.Remove(log)
	os.Rename(log+".saved", log)
	d = startDaemon(t, state)
	if after := len(d.listKeys(t)); after != before {
		t.Errorf("%d keys before, %d after refused calls", before, after)
	}
}

func (d *daemon) listKeys(t *testing.T) []keyJSON {
	t.Helper()
	var keys []keyJSON
	if d.cmd.ProcessState == nil {
		d.ctlJSON(t, &keys, "key", "list")
		return keys
	}
	nd := startDaemon(t, d.state)
	nd.ctlJSON(t, &keys, "key", "list")
	nd.stop()
	return keys
}

func TestStrictContent(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	var k, other keyJSON
	d.ctlJSON(t, &k, "key", "create", "--suite", "2")
	d.ctlJSON(t, &other, "key", "create", "--suite", "2")
	pub, otherPub := mustHex(t, k.PublicKey), mustHex(t, other.PublicKey)

	refusals := 0
	refuse := func(what, label string, content []byte) {
		t.Helper()
		refusals++
		if _, errOut, code := d.ctlIn(content, "sign", "--key", k.ID, "--label", label); code != 1 || !strings.Contains(errOut, "strict content") {
			t.Errorf("%s under %s: exit %d %q", what, label, code, errOut)
		}
	}
	for _, label := range []string{"FramedContentTBS", "LeafNodeTBS", "KeyPackageTBS", "GroupInfoTBS"} {
		refuse("non-MLS bytes", label, []byte("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"))
		valid := tbs(t, label, 2, pub, "x")
		refuse("trailing bytes", label, append(valid, 0))
		if _, errOut, code := d.ctlIn(valid, "sign", "--key", k.ID, "--label", label); code != 0 {
			t.Errorf("valid %s refused: %s", label, errOut)
		}
	}
	refuse("another key's LeafNode", "LeafNodeTBS", tbs(t, "LeafNodeTBS", 2, otherPub, "x"))
	refuse("another key's KeyPackage", "KeyPackageTBS", tbs(t, "KeyPackageTBS", 2, otherPub, "x"))
	refuse("another suite's GroupInfo", "GroupInfoTBS", tbs(t, "GroupInfoTBS", 7, pub, "x"))

	d.stop()
	logged := 0
	for _, r := range readAudit(t, filepath.Join(state, "audit.log")) {
		if r.Operation == "SignWithLabel" && r.Outcome == "denied" && strings.HasPrefix(r.Reason, "strict content") {
			logged++
		}
	}
	if logged != refusals {
		t.Errorf("%d strict-content refusals, %d audited as denied", refusals, logged)
	}

	// A policy can turn strict content off for one key.
	cfg := writeConfig(t, map[string]any{"policy": map[string]any{"keys": map[string]any{k.ID: map[string]any{"strict_content": false}}}})
	d = startDaemon(t, state, "--config", cfg)
	if _, errOut, code := d.ctlIn([]byte("anything"), "sign", "--key", k.ID, "--label", "FramedContentTBS"); code != 0 {
		t.Errorf("strict content off for the key: %s", errOut)
	}
	if _, _, code := d.ctlIn([]byte("anything"), "sign", "--key", other.ID, "--label", "FramedContentTBS"); code != 1 {
		t.Error("strict content off for one key turned it off for another")
	}
}
