package e2e

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"
	"github.com/mlskeyd/mlskeyd/mls"
)

type keyJSON struct {
	ID         string `json:"id"`
	Suite      uint16 `json:"suite"`
	PublicKey  string `json:"public_key"`
	Protection string `json:"protection"`
	Role       string `json:"role"`
	State      string `json:"state"`
}

// signContent is RFC 9420's SignContent, built here independently of mls/
// so the check does not depend on the code under test.
func signContent(label string, content []byte) []byte {
	vec := func(b []byte) []byte {
		n := len(b)
		switch {
		case n < 64:
			return append([]byte{byte(n)}, b...)
		case n < 16384:
			return append([]byte{0x40 | byte(n>>8), byte(n)}, b...)
		default:
			return append([]byte{0x80 | byte(n>>24), byte(n >> 16), byte(n >> 8), byte(n)}, b...)
		}
	}
	return append(vec([]byte("MLS 1.0 "+label)), vec(content)...)
}

// verifyStd checks an MLS signature with the standard library (and circl
// for Ed448) only.
func verifyStd(t *testing.T, suite uint16, pub []byte, label string, content, sig []byte) {
	t.Helper()
	msg := signContent(label, content)
	ok := false
	switch suite {
	case 1, 3:
		ok = ed25519.Verify(pub, msg, sig)
	case 4, 6:
		ok = ed448.Verify(pub, msg, sig, "")
	case 2:
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pub)
		h := sha256.Sum256(msg)
		ok = err == nil && ecdsa.VerifyASN1(k, h[:], sig)
	case 7:
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), pub)
		h := sha512.Sum384(msg)
		ok = err == nil && ecdsa.VerifyASN1(k, h[:], sig)
	case 5:
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P521(), pub)
		h := sha512.Sum512(msg)
		ok = err == nil && ecdsa.VerifyASN1(k, h[:], sig)
	}
	if !ok {
		t.Fatalf("suite %d: signature does not verify with the standard library", suite)
	}
}

func TestCLIKeysAndSigning(t *testing.T) {
	d := startDaemon(t, t.TempDir())

	var status struct {
		Backend string `json:"backend"`
		Suites  []struct {
			CipherSuite uint16 `json:"cipher_suite"`
			Signature   string `json:"signature"`
		} `json:"suites"`
	}
	d.ctlJSON(t, &status, "status")
	if status.Backend != "pkcs11" || len(status.Suites) != 7 {
		t.Fatalf("status: %+v", status)
	}

	for _, suite := range []string{"1", "0x0002", "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", "4", "5", "6", "7"} {
		var k keyJSON
		d.ctlJSON(t, &k, "key", "create", "--suite", suite)
		if k.ID == "" || k.Protection != "hardware" {
			t.Fatalf("key create --suite %s: %+v", suite, k)
		}
		pub, err := hex.DecodeString(k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		for _, label := range mls.SignatureLabels {
			content := tbs(t, label, k.Suite, pub, "content for "+label)
			var sig struct{ Signature string }
			in := filepath.Join(t.TempDir(), "content")
			os.WriteFile(in, content, 0o600)
			d.ctlJSON(t, &sig, "sign", "--key", k.ID, "--label", label, "--in", in)
			s, _ := hex.DecodeString(sig.Signature)
			verifyStd(t, k.Suite, pub, label, content, s)
		}
		// Content from stdin, text output.
		stdin := tbs(t, "FramedContentTBS", k.Suite, pub, "stdin")
		out, errOut, code := d.ctlIn(stdin, "sign", "--key", k.ID, "--label", "FramedContentTBS")
		if code != 0 {
			t.Fatalf("sign from stdin: %s", errOut)
		}
		s, err := hex.DecodeString(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("sign prints %q", out)
		}
		verifyStd(t, k.Suite, pub, "FramedContentTBS", stdin, s)
	}

	var keys []keyJSON
	d.ctlJSON(t, &keys, "key", "list")
	if len(keys) != 7 {
		t.Fatalf("key list: %d keys", len(keys))
	}
	var shown keyJSON
	d.ctlJSON(t, &shown, "key", "show", keys[0].ID)
	if shown.ID != keys[0].ID || shown.Role != "signature" || shown.State != "active" {
		t.Fatalf("key show: %+v", shown)
	}
	var deleted keyJSON
	d.ctlJSON(t, &deleted, "key", "delete", keys[0].ID)
	if deleted.State != "destroyed" {
		t.Fatalf("key delete: %+v", deleted)
	}

	// Errors: one line on stderr, non-zero exit.
	for _, args := range [][]string{
		{"sign", "--key", keys[0].ID, "--label", "FramedContentTBS"},                    // destroyed
		{"sign", "--key", keys[1].ID, "--label", "NotALabel"},                           // label
		{"sign", "--key", "00112233445566778899aabbccddeeff", "--label", "LeafNodeTBS"}, // unknown
		{"key", "create", "--suite", "9"},
		{"key", "show", "not-hex"},
	} {
		_, errOut, code := d.ctlIn([]byte("x"), args...)
		if code == 0 || strings.Count(strings.TrimRight(errOut, "\n"), "\n") != 0 || errOut == "" {
			t.Errorf("mlskeyctl %v: exit %d, stderr %q", args, code, errOut)
		}
	}
}

func TestRestartKeepsKeysAndRemovesSocket(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	var k keyJSON
	d.ctlJSON(t, &k, "key", "create", "--suite", "2")
	d.stop()
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(state, "pin")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pin file: %v %v", fi, err)
	}

	// A crashed daemon leaves its socket; the next one replaces it.
	d = startDaemon(t, state)
	d.kill()
	if _, err := os.Stat(d.socket); err != nil {
		t.Skip("socket vanished after kill; nothing to test")
	}
	d = startDaemon(t, state)
	pub, _ := hex.DecodeString(k.PublicKey)
	content := tbs(t, "GroupInfoTBS", 2, pub, "after restart")
	in := filepath.Join(t.TempDir(), "content")
	os.WriteFile(in, content, 0o600)
	var sig struct{ Signature string }
	d.ctlJSON(t, &sig, "sign", "--key", k.ID, "--label", "GroupInfoTBS", "--in", in)
	s, _ := hex.DecodeString(sig.Signature)
	verifyStd(t, 2, pub, "GroupInfoTBS", content, s)

	// A live daemon's socket is refused.
	second := startDaemonExpectFailure(t, state)
	if !strings.Contains(second, "another daemon") && !strings.Contains(second, "locked") {
		t.Fatalf("second daemon on the same state: %s", second)
	}
}
