package e2e

import (
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

// TestTPMBackend drives the real binaries on --backend tpm, against the
// in-process simulator (dev mode's default) and against swtpm.
func TestTPMBackend(t *testing.T) {
	t.Run("simulator", func(t *testing.T) {
		t.Parallel()
		testTPM(t, nil)
	})
	t.Run("swtpm", func(t *testing.T) {
		t.Parallel()
		sw, ca := swtpm.StartManufactured(t, t.TempDir())
		roots := filepath.Join(t.TempDir(), "ek-roots.pem")
		os.WriteFile(roots, ca.Bundle(), 0o644)
		testTPM(t, sw, roots)
	})
}

// testTPM runs against sw (nil: the simulator); ekRoots is the CA bundle
// that issued sw's EK certificates.
func testTPM(t *testing.T, sw *swtpm.Process, ekRoots ...string) {
	state := t.TempDir()
	args := []string{"--backend", "tpm"}
	if sw != nil {
		args = append(args, "--tpm", sw.Device())
	}
	d := startDaemon(t, state, args...)

	var status struct {
		Backend string `json:"backend"`
		Suites  []struct {
			CipherSuite uint16  `json:"cipher_suite"`
			Signature   *string `json:"signature"`
			Init        *string `json:"init"`
		} `json:"suites"`
	}
	d.ctlJSON(t, &status, "status")
	if status.Backend != "tpm" {
		t.Fatalf("status: %+v", status)
	}
	for _, s := range status.Suites {
		want := "sealed"
		if s.CipherSuite == 2 || s.CipherSuite == 5 || s.CipherSuite == 7 {
			want = "hardware"
		}
		if s.Signature == nil || *s.Signature != want || s.Init == nil || *s.Init != want {
			t.Errorf("suite %d: signature %v init %v, want %s", s.CipherSuite, s.Signature, s.Init, want)
		}
	}

	type suiteKeys struct {
		sig keyJSON
		kps []createdKP
	}
	keys := map[uint16]*suiteKeys{}
	for _, suite := range []uint16{2, 5, 7, 1} {
		s := strconv.Itoa(int(suite))
		sk := &suiteKeys{}
		d.ctlJSON(t, &sk.kps, "keypackage", "create", "--suite", s, "--identity", "tpm@example.org", "--count", "2")
		d.ctlJSON(t, &sk.sig, "key", "show", sk.kps[0].SignatureKeyID)
		want := "hardware"
		if suite == 1 {
			want = "sealed"
		}
		if sk.sig.Protection != want {
			t.Fatalf("suite %d signature key is %s, want %s", suite, sk.sig.Protection, want)
		}
		keys[suite] = sk
		signAndVerify(t, d, sk.sig, "before restart")

		// ts-mls checks the KeyPackages and adds the first to its group;
		// the daemon opens the Welcome with the TPM-held init key.
		var req struct {
			KeyPackages []string `json:"key_packages"`
		}
		for _, kp := range sk.kps {
			req.KeyPackages = append(req.KeyPackages, kp.KeyPackage)
		}
		var verified struct {
			Results []struct {
				OK    bool   `json:"ok"`
				Error string `json:"error"`
			} `json:"results"`
		}
		tsmls(t, "verify", req, &verified)
		for i, r := range verified.Results {
			if !r.OK {
				t.Fatalf("suite %d: ts-mls rejects KeyPackage %d: %s", suite, i, r.Error)
			}
		}
		openWithTSMLS(t, d, sk.kps[0], suite)
	}

	// Attestation: the daemon's evidence verifies for hardware keys, offline
	// too, and fails for another nonce or a tampered statement. Evidence
	// without a trust anchor is reported as not anchored and refused
	// unless allowed. With swtpm's EK certificates, --ek-roots anchors it
	// and the AK it enrolls pins it offline.
	akFile := filepath.Join(t.TempDir(), "ak.pem")
	for i, id := range []string{keys[2].sig.ID, keys[7].kps[1].InitKeyID} {
		nonce := hex.EncodeToString([]byte("nonce for " + id))[:40]
		out, errOut, code := d.ctl("key", "attest", id, "--nonce", nonce)
		if code != 1 || !strings.Contains(out, "consistent, NOT anchored to a trusted TPM") || !strings.Contains(errOut, "NOT anchored") {
			t.Fatalf("key attest without a trust anchor: exit %d %s %s", code, out, errOut)
		}
		anchor := []string{"--allow-unanchored"}
		if len(ekRoots) > 0 {
			anchor = []string{"--ek-roots", ekRoots[0]}
			if i == 0 {
				anchor = append(anchor, "--ak-out", akFile)
			}
		}
		var ev map[string]any
		d.ctlJSON(t, &ev, append([]string{"key", "attest", id, "--nonce", nonce}, anchor...)...)
		wantAnchored := len(ekRoots) > 0
		if ev["verified"] != wantAnchored || ev["anchored"] != wantAnchored || ev["consistent"] != true || ev["format"] != "tpm2-certify" ||
			ev["nonce"] != nonce || ev["ak_name"] == "" || ev["key_name"] == "" || ev["key_attributes"] == nil {
			t.Fatalf("key attest %s %v: %v", id, anchor, ev)
		}
		if wantAnchored && ev["anchor"] != "ek-certificate" {
			t.Fatalf("key attest %s: anchor %v", id, ev["anchor"])
		}
		file := filepath.Join(t.TempDir(), "evidence.json")
		write := func(ev map[string]any) {
			b, _ := json.Marshal(ev)
			os.WriteFile(file, b, 0o600)
		}
		write(ev)
		if out, errOut, code := d.ctl("attest", "verify", "--in", file); code != 1 || !strings.Contains(out, "NOT anchored") {
			t.Fatalf("attest verify without a trust anchor: exit %d %s %s", code, out, errOut)
		}
		verifyArgs := []string{"attest", "verify", "--in", file, "--allow-unanchored"}
		if wantAnchored {
			verifyArgs = []string{"attest", "verify", "--in", file, "--ak", akFile}
		}
		if out, errOut, code := d.ctl(verifyArgs...); code != 0 || (wantAnchored && !strings.Contains(out, "anchored to a trusted TPM (pinned-ak)")) {
			t.Fatalf("attest verify %v: exit %d %s %s", verifyArgs, code, out, errOut)
		}
		if wantAnchored {
			if out, errOut, code := d.ctl("attest", "verify", "--in", file, "--ek-roots", ekRoots[0], "--json"); code != 0 || !strings.Contains(out, `"anchor": "ek-certificate"`) {
				t.Fatalf("attest verify --ek-roots: exit %d %s %s", code, out, errOut)
			}
		}
		for field, bad := range map[string]string{
			"nonce":     hex.EncodeToString([]byte("another nonce")),
			"statement": flipHex(ev["statement"].(string)),
			"signature": flipHex(ev["signature"].(string)),
		} {
			tampered := maps.Clone(ev)
			tampered[field] = bad
			write(tampered)
			if _, errOut, code := d.ctl(verifyArgs...); code == 0 || !strings.Contains(errOut, "does not verify") {
				t.Fatalf("attest verify with a changed %s: exit %d %s", field, code, errOut)
			}
		}
	}
	if _, errOut, code := d.ctl("key", "attest", keys[1].sig.ID, "--nonce", "00"); code == 0 || !strings.Contains(errOut, "failed precondition: key_id: key \""+keys[1].sig.ID+"\" has protection sealed; only hardware keys can be attested\n") {
		t.Fatalf("attest a sealed key: exit %d %s", code, errOut)
	}

	// Keys survive a restart of the daemon and of the TPM.
	d.stop()
	if sw != nil {
		sw.Restart(t)
	}
	d = startDaemon(t, state, args...)
	for _, suite := range []uint16{2, 5, 7, 1} {
		signAndVerify(t, d, keys[suite].sig, "after restart")
		openWithTSMLS(t, d, keys[suite].kps[1], suite)
	}

	// With a hardware-only policy, the sealed suites are refused.
	d.stop()
	d = startDaemon(t, state, append(args, "--require-hardware", "all")...)
	if _, errOut, code := d.ctl("key", "create", "--suite", "1"); code == 0 || !strings.Contains(errOut, "failed precondition") {
		t.Fatalf("suite 1 under --require-hardware all: exit %d, %s", code, errOut)
	}
	var k keyJSON
	d.ctlJSON(t, &k, "key", "create", "--suite", "7")
	if k.Protection != "hardware" {
		t.Fatalf("suite 7 key under policy: %+v", k)
	}

	// The same catalog against another TPM: its blobs would not load there,
	// and the daemon says so instead of serving broken keys.
	if sw == nil {
		return
	}
	d.stop()
	other := swtpm.Start(t, t.TempDir())
	out := startDaemonExpectFailure(t, state, "--backend", "tpm", "--tpm", other.Device())
	// The catalog records the storage root key's Name; another TPM has
	// another one, and the daemon refuses before touching any key.
	want := regexp.MustCompile(`(?m)^mlskeyd: refusing to start: catalog .* \(installation [0-9a-f]{32}\) and device tpm .* ` +
		`\(identity srk:[0-9a-f]+\) do not match: the catalog's keys were made on tpm .*; check --catalog and the device selection \(--tpm; each TPM needs its own state directory\)`)
	if !want.MatchString(out) {
		t.Fatalf("daemon on another TPM: %s", out)
	}
}

func signAndVerify(t *testing.T, d *daemon, k keyJSON, when string) {
	t.Helper()
	pub, _ := hex.DecodeString(k.PublicKey)
	content := tbs(t, "GroupInfoTBS", k.Suite, pub, when)
	in := filepath.Join(t.TempDir(), "content")
	os.WriteFile(in, content, 0o600)
	var sig struct{ Signature string }
	d.ctlJSON(t, &sig, "sign", "--key", k.ID, "--label", "GroupInfoTBS", "--in", in)
	s, _ := hex.DecodeString(sig.Signature)
	verifyStd(t, k.Suite, pub, "GroupInfoTBS", content, s)
}

// openWithTSMLS has ts-mls add the KeyPackage to a new group and checks
// that the daemon opens the Welcome to the same group and epoch, once.
func openWithTSMLS(t *testing.T, d *daemon, kp createdKP, suite uint16) {
	t.Helper()
	var added struct {
		Welcome string `json:"welcome"`
		GroupID string `json:"group_id"`
		Epoch   uint64 `json:"epoch"`
	}
	tsmls(t, "add", map[string]string{"key_package": kp.KeyPackage}, &added)
	welcome, _ := hex.DecodeString(added.Welcome)
	file := filepath.Join(t.TempDir(), "welcome")
	os.WriteFile(file, welcome, 0o600)
	var opened openedWelcome
	d.ctlJSON(t, &opened, "welcome", "open", "--in", file)
	if opened.GroupID != added.GroupID || opened.Epoch != added.Epoch || opened.KeyPackageRef != kp.KeyPackageRef || opened.CipherSuite != suite {
		t.Fatalf("suite %d: welcome open %+v, ts-mls made %+v", suite, opened, added)
	}
	if _, _, code := d.ctl("welcome", "open", "--in", file); code == 0 {
		t.Fatalf("suite %d: a consumed init key opened a Welcome again", suite)
	}
}

// flipHex changes one bit in the middle of a hex string's bytes.
func flipHex(h string) string {
	b, _ := hex.DecodeString(h)
	b[len(b)/2] ^= 1
	return hex.EncodeToString(b)
}
