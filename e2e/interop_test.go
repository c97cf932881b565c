package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tsmls runs the ts-mls helper in clients/interop with a JSON request and
// decodes its JSON answer. The helper is an independent RFC 9420
// implementation: agreeing with it is the evidence that what the daemon
// makes and opens is MLS, not just what our own code expects.
func tsmls(t *testing.T, cmd string, req, resp any) {
	t.Helper()
	dir, _ := filepath.Abs("../clients/interop")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ts-mls")); err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_NODE") == "1" {
			t.Fatalf("ts-mls is not installed in %s (run npm ci there; scripts/test.sh does)", dir)
		}
		t.Skip("ts-mls not installed (scripts/test.sh installs it)")
	}
	in, _ := json.Marshal(req)
	c := exec.Command("node", "tsmls.mjs", cmd)
	c.Dir = dir
	c.Stdin = bytes.NewReader(in)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		t.Fatalf("ts-mls %s: %v: %s", cmd, err, errb.String())
	}
	if err := json.Unmarshal(out.Bytes(), resp); err != nil {
		t.Fatalf("ts-mls %s: bad JSON %q", cmd, out.String())
	}
}

type createdKP struct {
	KeyPackageRef       string `json:"key_package_ref"`
	InitKeyID           string `json:"init_key_id"`
	LeafEncryptionKeyID string `json:"leaf_encryption_key_id"`
	SignatureKeyID      string `json:"signature_key_id"`
	KeyPackage          string `json:"key_package"`
}

type openedWelcome struct {
	KeyPackageRef string  `json:"key_package_ref"`
	CipherSuite   uint16  `json:"cipher_suite"`
	GroupID       string  `json:"group_id"`
	Epoch         uint64  `json:"epoch"`
	JoinerSecret  string  `json:"joiner_secret"`
	PathSecret    *string `json:"path_secret"`
}

func TestInteropWithTSMLS(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	for _, suite := range []uint16{1, 2, 3, 5, 7} {
		s := strconv.Itoa(int(suite))
		t.Run("suite"+s, func(t *testing.T) {
			var kps []createdKP
			d.ctlJSON(t, &kps, "keypackage", "create", "--suite", s, "--identity", "alice@example.org", "--count", "3")
			if len(kps) != 3 {
				t.Fatalf("%d KeyPackages", len(kps))
			}
			var lr []createdKP
			d.ctlJSON(t, &lr, "keypackage", "create", "--suite", s, "--identity", "alice@example.org",
				"--signature-key", kps[0].SignatureKeyID, "--last-resort", "--lifetime", "30d")
			all := append(kps, lr...)

			var req struct {
				KeyPackages []string `json:"key_packages"`
			}
			for _, kp := range all {
				req.KeyPackages = append(req.KeyPackages, kp.KeyPackage)
			}
			var verified struct {
				Results []struct {
					OK            bool   `json:"ok"`
					Error         string `json:"error"`
					CipherSuite   uint16 `json:"cipher_suite"`
					KeyPackageRef string `json:"key_package_ref"`
					Identity      string `json:"identity"`
					LastResort    bool   `json:"last_resort"`
				} `json:"results"`
			}
			tsmls(t, "verify", req, &verified)
			for i, r := range verified.Results {
				if !r.OK {
					t.Fatalf("ts-mls rejects KeyPackage %d: %s", i, r.Error)
				}
				if r.CipherSuite != suite || r.KeyPackageRef != all[i].KeyPackageRef ||
					r.Identity != hex.EncodeToString([]byte("alice@example.org")) || r.LastResort != (i == 3) {
					t.Fatalf("ts-mls sees KeyPackage %d differently: %+v vs %+v", i, r, all[i])
				}
			}

			// ts-mls adds the KeyPackage to its own group; the daemon opens
			// the Welcome and must agree on group id and epoch.
			for _, kp := range []createdKP{kps[1], lr[0]} {
				var added struct {
					Welcome       string `json:"welcome"`
					GroupID       string `json:"group_id"`
					Epoch         uint64 `json:"epoch"`
					KeyPackageRef string `json:"key_package_ref"`
				}
				tsmls(t, "add", map[string]string{"key_package": kp.KeyPackage}, &added)
				welcome, _ := hex.DecodeString(added.Welcome)
				file := filepath.Join(t.TempDir(), "welcome")
				os.WriteFile(file, welcome, 0o600)
				var opened openedWelcome
				d.ctlJSON(t, &opened, "welcome", "open", "--in", file)
				if opened.GroupID != added.GroupID || opened.Epoch != added.Epoch ||
					opened.KeyPackageRef != kp.KeyPackageRef || opened.CipherSuite != suite || len(opened.JoinerSecret) == 0 {
					t.Fatalf("welcome open: %+v, ts-mls made %+v", opened, added)
				}
				if strings.Contains(d.log.String(), opened.JoinerSecret) {
					t.Fatal("the daemon logged a joiner secret")
				}
				out, _, code := d.ctl("welcome", "open", "--in", file)
				if kp.InitKeyID == lr[0].InitKeyID {
					// Last resort: reusable.
					if code != 0 || !strings.Contains(out, added.GroupID) {
						t.Fatalf("last-resort Welcome opened twice: exit %d %s", code, out)
					}
					continue
				}
				if code == 0 {
					t.Fatal("a consumed init key opened a second Welcome")
				}
				var k keyJSON
				d.ctlJSON(t, &k, "key", "show", kp.InitKeyID)
				if k.State != "consumed" {
					t.Fatalf("init key after Welcome: %+v", k)
				}
			}
		})
	}
}

// TestX509Credential: a CA certifies the daemon's signature key, and the
// daemon's KeyPackages carry that chain; ts-mls accepts them. A chain for
// another key is refused.
func TestX509Credential(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	var sig, other keyJSON
	d.ctlJSON(t, &sig, "key", "create", "--suite", "2")
	d.ctlJSON(t, &other, "key", "create", "--suite", "2")
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	chainFor := func(k keyJSON) string {
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), mustHex(t, k.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice@example.org"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, leaf, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "chain.pem")
		pemBytes := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
		os.WriteFile(f, pemBytes, 0o600)
		return f
	}
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--signature-key", sig.ID, "--x509-chain", chainFor(sig))
	var verified struct {
		Results []struct {
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		} `json:"results"`
	}
	tsmls(t, "verify", map[string][]string{"key_packages": {kps[0].KeyPackage}}, &verified)
	if len(verified.Results) != 1 || !verified.Results[0].OK {
		t.Fatalf("ts-mls rejects the X.509 KeyPackage: %+v", verified)
	}
	if _, errOut, code := d.ctl("keypackage", "create", "--signature-key", sig.ID, "--x509-chain", chainFor(other)); code != 1 || !strings.Contains(errOut, "invalid argument") {
		t.Fatalf("a certificate for another key: exit %d %s", code, errOut)
	}
}
