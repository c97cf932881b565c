package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
)

// testCA is a CA that issues end-entity certificates for public keys taken
// from certification requests.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	der  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mlskeyd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, der: der}
}

// issue checks the request's signature, as a CA does, and certifies its key.
func (ca *testCA) issue(t *testing.T, csr *x509.CertificateRequest) []byte {
	t.Helper()
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CA: request signature: %v", err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: csr.Subject,
		DNSNames: csr.DNSNames, EmailAddresses: csr.EmailAddresses, URIs: csr.URIs,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestGoClientX509WithTSMLS: through the Go client, a daemon key gets an
// X.509 credential from a test CA via a daemon-signed CSR; the daemon's
// KeyPackages with that chain are verified and added to a group by ts-mls,
// and the Go client opens the Welcome (once: the second time it is
// ErrConsumed).
func TestGoClientX509WithTSMLS(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	ctx := context.Background()
	c, err := client.Dial(ctx, d.socket, client.CallTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ca := newTestCA(t)
	for _, suite := range []mls.CipherSuite{1, 2, 7} {
		t.Run(strconv.Itoa(int(suite)), func(t *testing.T) {
			sig, err := c.NewSignatureKey(ctx, suite)
			if err != nil {
				t.Fatal(err)
			}
			_, csr, err := sig.CreateCSR(ctx, client.CSR{CommonName: "bob", Organization: []string{"Example"},
				EmailAddresses: []string{"bob@example.org"}, URIs: []string{"im:bob@example.org"}})
			if err != nil {
				t.Fatal(err)
			}
			if csr.Subject.CommonName != "bob" || len(csr.EmailAddresses) != 1 || len(csr.URIs) != 1 {
				t.Fatalf("CSR names: %+v %v %v", csr.Subject, csr.EmailAddresses, csr.URIs)
			}
			leaf := ca.issue(t, csr)
			cert, _ := x509.ParseCertificate(leaf)
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(sig.Signer().Public()) {
				t.Fatal("the certificate's key is not the signature key")
			}
			if _, err := sig.Signer().Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, client.ErrNotMLS) {
				t.Fatalf("crypto.Signer view signed an arbitrary digest: %v", err)
			}

			_, kps, err := c.CreateMLSKeyPackages(ctx, client.KeyPackageOptions{
				SignatureKeyID: sig.ID(), X509Chain: [][]byte{leaf, ca.der}, Count: 2,
				Credentials: []uint16{mls.CredentialTypeBasic},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(kps) != 2 || kps[0].KeyPackage.LeafNode.Credential.Type != mls.CredentialTypeX509 || kps[0].KeyPackage.CipherSuite != suite {
				t.Fatalf("KeyPackages: %+v", kps)
			}

			// SignWithLabel through the handle verifies with the public key.
			su, _ := mls.LookupSuite(suite)
			tbs := kps[0].KeyPackage.TBS()
			s, err := sig.SignWithLabel(ctx, "KeyPackageTBS", tbs)
			if err != nil {
				t.Fatal(err)
			}
			if err := su.VerifyWithLabel(sig.PublicKey(), "KeyPackageTBS", tbs, s); err != nil {
				t.Fatalf("SignWithLabel: %v", err)
			}
			// DecryptWithLabel through the leaf key's handle.
			leafKey, err := c.HPKEKey(ctx, kps[1].LeafEncryptionKeyID)
			if err != nil {
				t.Fatal(err)
			}
			kem, ct, err := su.EncryptWithLabel(leafKey.PublicKey(), "UpdatePathNode", []byte("group context"), []byte("path secret"))
			if err != nil {
				t.Fatal(err)
			}
			pt, err := leafKey.DecryptWithLabel(ctx, "UpdatePathNode", []byte("group context"), kem, ct)
			if err != nil || string(pt) != "path secret" {
				t.Fatalf("DecryptWithLabel: %q %v", pt, err)
			}

			var verified struct {
				Results []struct {
					OK             bool   `json:"ok"`
					Error          string `json:"error"`
					CredentialType string `json:"credential_type"`
					KeyPackageRef  string `json:"key_package_ref"`
				} `json:"results"`
			}
			tsmls(t, "verify", map[string][]string{"key_packages": {hex.EncodeToString(kps[0].Message)}}, &verified)
			if len(verified.Results) != 1 || !verified.Results[0].OK || verified.Results[0].CredentialType != "x509" ||
				verified.Results[0].KeyPackageRef != hex.EncodeToString(kps[0].Ref) {
				t.Fatalf("ts-mls verify: %+v", verified)
			}
			var added struct {
				Welcome string `json:"welcome"`
				GroupID string `json:"group_id"`
				Epoch   uint64 `json:"epoch"`
			}
			tsmls(t, "add", map[string]string{"key_package": hex.EncodeToString(kps[0].Message)}, &added)
			welcome := mustHex(t, added.Welcome)
			j, err := c.OpenMLSWelcome(ctx, welcome)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(j.GroupID) != added.GroupID || j.Epoch != added.Epoch || j.InitKeyID != kps[0].InitKeyID ||
				j.GroupInfo == nil || len(j.GroupSecrets.JoinerSecret) != su.HashSize() || j.Suite != suite {
				t.Fatalf("OpenMLSWelcome: %+v, ts-mls made group %s epoch %d", j, added.GroupID, added.Epoch)
			}
			if _, err := c.OpenMLSWelcome(ctx, welcome); !errors.Is(err, client.ErrConsumed) {
				t.Fatalf("second OpenMLSWelcome: %v", err)
			}
			if _, err := c.HPKEKey(ctx, strings.Repeat("0", 32)); !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("unknown key: %v", err)
			}
		})
	}
}

// TestKeyCSRCommand: mlskeyctl key csr prints a request signed by the
// key for its own public key; keypackage create --x509-chain takes the
// chain a CA issued for it, and ts-mls accepts the KeyPackage.
func TestKeyCSRCommand(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	ca := newTestCA(t)
	for _, suite := range []string{"1", "2", "5"} {
		var sig keyJSON
		d.ctlJSON(t, &sig, "key", "create", "--suite", suite)
		out, errOut, code := d.ctl("key", "csr", sig.ID, "--subject", `CN=alice,O=Example\, Inc.,C=DE`,
			"--san", "email:alice@example.org", "--san", "alice.example.org", "--san", "URI:im:alice@example.org")
		if code != 0 {
			t.Fatalf("suite %s: key csr: exit %d: %s", suite, code, errOut)
		}
		block, _ := pem.Decode([]byte(out))
		if block == nil || block.Type != "CERTIFICATE REQUEST" {
			t.Fatalf("key csr printed %q", out)
		}
		csr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if csr.Subject.CommonName != "alice" || len(csr.Subject.Organization) != 1 || csr.Subject.Organization[0] != "Example, Inc." ||
			len(csr.Subject.Country) != 1 || len(csr.DNSNames) != 1 || len(csr.EmailAddresses) != 1 || len(csr.URIs) != 1 {
			t.Fatalf("suite %s: CSR names: %+v %v %v %v", suite, csr.Subject, csr.DNSNames, csr.EmailAddresses, csr.URIs)
		}
		leaf := ca.issue(t, csr)
		f := filepath.Join(t.TempDir(), "chain.pem")
		os.WriteFile(f, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})...), 0o600)
		var kps []createdKP
		d.ctlJSON(t, &kps, "keypackage", "create", "--signature-key", sig.ID, "--x509-chain", f)
		var verified struct {
			Results []struct {
				OK    bool   `json:"ok"`
				Error string `json:"error"`
			} `json:"results"`
		}
		tsmls(t, "verify", map[string][]string{"key_packages": {kps[0].KeyPackage}}, &verified)
		if len(verified.Results) != 1 || !verified.Results[0].OK {
			t.Fatalf("suite %s: ts-mls rejects the KeyPackage: %+v", suite, verified)
		}
	}

	var ed448, sig keyJSON
	d.ctlJSON(t, &ed448, "key", "create", "--suite", "4")
	d.ctlJSON(t, &sig, "key", "create", "--suite", "2")
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--signature-key", sig.ID, "--identity", "a")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{sig.ID}, 2, "--subject or --san is required"},
		{[]string{sig.ID, "--subject", "CN=a,SERIALNUMBER=1"}, 2, `attribute "SERIALNUMBER"`},
		{[]string{sig.ID, "--subject", "CN=a", "--san", "ftp:x"}, 2, "DNS:NAME"},
		{[]string{sig.ID, "--subject", "CN=a,C=Germany"}, 1, "country"},
		{[]string{sig.ID, "--san", "email:not an address"}, 1, "email_addresses"},
		{[]string{sig.ID, "--subject", "CN=" + strings.Repeat("a", 300)}, 1, "common_name"},
		{[]string{kps[0].InitKeyID, "--subject", "CN=a"}, 1, "not a signature key"},
		{[]string{ed448.ID, "--subject", "CN=a"}, 1, "Ed448"},
		{[]string{strings.Repeat("0", 32), "--subject", "CN=a"}, 1, "not found"},
	} {
		_, errOut, code := d.ctl(append([]string{"key", "csr"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("key csr %v: exit %d %q, want exit %d with %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}

	// Each request is audited with its key, as the label CSR.
	d.stop()
	signed := 0
	for _, r := range readAudit(t, filepath.Join(d.state, "audit.log")) {
		if r.Operation == "CreateCSR" && r.Label == "CSR" && r.KeyID != "" && r.Outcome == "ok" {
			signed++
		}
	}
	if signed != 3 {
		t.Errorf("%d audited CSRs, want 3", signed)
	}
}
