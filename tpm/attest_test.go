package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
)

func nonce(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// transientCount reports how many transient objects the TPM holds.
func transientCount(t testing.TB, b *Backend) int {
	t.Helper()
	var n int
	err := b.do(context.Background(), "test", func() error {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}.Execute(b.tpm)
		if err != nil {
			return err
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return err
		}
		for _, h := range hs.Handle {
			if h>>24 == 0x80 {
				n++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func cloneAtt(a *keystore.Attestation) *keystore.Attestation {
	c := *a
	c.Statement = bytes.Clone(a.Statement)
	c.Signature = bytes.Clone(a.Signature)
	c.AttestationKey = bytes.Clone(a.AttestationKey)
	c.KeyPublicArea = bytes.Clone(a.KeyPublicArea)
	c.Certificates = nil
	for _, x := range a.Certificates {
		c.Certificates = append(c.Certificates, bytes.Clone(x))
	}
	return &c
}

// wantAttErr checks that err is an attest.ErrAttestation naming what failed.
func wantAttErr(t *testing.T, what string, err error, substr string) {
	t.Helper()
	if !errors.Is(err, attest.ErrAttestation) {
		t.Fatalf("%s: attest.VerifyCertify = %v, want attest.ErrAttestation", what, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("%s: attest.VerifyCertify = %q, want it to mention %q", what, err, substr)
	}
	t.Logf("%s: %v", what, err)
}

func TestAttest(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		type key struct {
			alg      keystore.Algorithm
			ref, pub []byte
		}
		var keys []key
		for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDHP256} {
			ref, pub, err := b.Generate(ctx, "k", alg)
			if err != nil {
				t.Fatalf("Generate %s: %v", alg, err)
			}
			keys = append(keys, key{alg, ref, pub})
		}
		var akPub *ecdsa.PublicKey
		for i, k := range keys {
			n := nonce(t, 32)
			a, err := b.Attest(ctx, k.ref, k.alg, n)
			if err != nil {
				t.Fatalf("Attest %s: %v", k.alg, err)
			}
			if err := attest.VerifyCertify(a, k.pub, n); err != nil {
				t.Fatalf("attest.VerifyCertify %s: %v", k.alg, err)
			}
			ak, err := attest.AttestationKeyPublic(a)
			if err != nil {
				t.Fatal(err)
			}
			if akPub == nil {
				akPub = ak
			} else if !akPub.Equal(ak) {
				t.Fatalf("%s: the AK changed between attestations", k.alg)
			}

			other := keys[(i+1)%len(keys)]
			wantAttErr(t, "wrong nonce", attest.VerifyCertify(a, k.pub, nonce(t, 32)), "nonce")
			wantAttErr(t, "empty nonce", attest.VerifyCertify(a, k.pub, nil), "nonce")
			wantAttErr(t, "another key's public key", attest.VerifyCertify(a, other.pub, n), "not the given public key")

			c := cloneAtt(a)
			c.Statement[len(c.Statement)/2] ^= 0x01
			wantAttErr(t, "tampered statement", attest.VerifyCertify(c, k.pub, n), "signature")

			c = cloneAtt(a)
			c.Signature[len(c.Signature)-1] ^= 0x01
			wantAttErr(t, "tampered signature", attest.VerifyCertify(c, k.pub, n), "signature")

			c = cloneAtt(a)
			_, bl, err := b.keyBlob(other.ref, other.alg)
			if err != nil {
				t.Fatal(err)
			}
			c.KeyPublicArea = bytes.Clone(bl.pub.Bytes())
			wantAttErr(t, "swapped key public area", attest.VerifyCertify(c, other.pub, n), "Name")

			c = cloneAtt(a)
			c.Format = "tpm2-quote"
			wantAttErr(t, "wrong format", attest.VerifyCertify(c, k.pub, n), "format")

			c = cloneAtt(a)
			c.AttestationKey[len(c.AttestationKey)-1] ^= 0x01 // Y coordinate
			if err := attest.VerifyCertify(c, k.pub, n); !errors.Is(err, attest.ErrAttestation) {
				t.Fatalf("tampered AK: attest.VerifyCertify = %v, want attest.ErrAttestation", err)
			}

			c = cloneAtt(a)
			c.Certificates = append(c.Certificates, []byte("not a certificate"))
			wantAttErr(t, "bad certificate", attest.VerifyCertify(c, k.pub, n), "certificate")

			if err := attest.VerifyCertify(a, k.pub, n); err != nil {
				t.Fatalf("the tests modified the original: %v", err)
			}
		}
		if n := transientCount(t, b); n > 3 {
			t.Fatalf("%d transient objects loaded, want at most 3", n)
		}
	})
}

func TestAttestNonce(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		ref, pub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 65} {
			if _, err := b.Attest(ctx, ref, keystore.ECDSAP256, make([]byte, n)); !errors.Is(err, keystore.ErrInvalidArgument) {
				t.Fatalf("Attest with a %d-byte nonce: %v, want ErrInvalidArgument", n, err)
			}
		}
		for _, n := range []int{1, 64} {
			nc := nonce(t, n)
			a, err := b.Attest(ctx, ref, keystore.ECDSAP256, nc)
			if err != nil {
				t.Fatalf("Attest with a %d-byte nonce: %v", n, err)
			}
			if err := attest.VerifyCertify(a, pub, nc); err != nil {
				t.Fatalf("%d-byte nonce: %v", n, err)
			}
		}
		// The wrong algorithm for the blob is refused before the TPM.
		if _, err := b.Attest(ctx, ref, keystore.ECDHP256, nonce(t, 8)); err == nil {
			t.Fatal("Attest with the wrong algorithm succeeded")
		}
		if _, err := b.Attest(ctx, []byte{0x01, 0x00}, keystore.ECDSAP256, nonce(t, 8)); !errors.Is(err, ErrBadBlob) {
			t.Fatalf("Attest with a garbage blob: %v, want ErrBadBlob", err)
		}
	})
}

func TestAttestForeignBlob(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		ref, _, err := b.Generate(ctx, "a", keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		b.Close() // one simulator per process
		o := openCfg(t, env.foreign(t))
		for i := 0; i < 4; i++ { // the AK must be flushed each time
			_, err = o.Attest(ctx, ref, keystore.ECDSAP256, nonce(t, 16))
			if !errors.Is(err, ErrForeignBlob) {
				t.Fatalf("Attest of a foreign blob: %v, want ErrForeignBlob", err)
			}
		}
		t.Logf("Attest: %v", err)
		if n := transientCount(t, o); n != 1 {
			t.Fatalf("%d transient objects loaded after failed attestations, want 1 (the SRK)", n)
		}
	})
}

// TestAttestInterleaved mixes Attest and Sign over more keys than the
// cache holds, so the AK keeps competing with cached keys for the 3
// transient slots.
// With LoadedKeys above the TPM's slot count, the AK and the key to
// certify get their slots through TPM_RC_OBJECT_MEMORY and eviction.
func TestAttestInterleaved(t *testing.T) {
	for _, lk := range []int{0, 1, 5} {
		t.Run(fmt.Sprint("LoadedKeys=", lk), func(t *testing.T) { attestInterleaved(t, lk) })
	}
}

func attestInterleaved(t *testing.T, loadedKeys int) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		env.cfg.LoadedKeys = loadedKeys
		b := env.open(t)
		type key struct {
			alg      keystore.Algorithm
			ref, pub []byte
		}
		var keys []key
		for i, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDHP256, keystore.ECDSAP256, keystore.ECDSAP384} {
			ref, pub, err := b.Generate(ctx, fmt.Sprint(i), alg)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, key{alg, ref, pub})
		}
		for round := 0; round < 3; round++ {
			for i, k := range keys {
				n := nonce(t, 20)
				a, err := b.Attest(ctx, k.ref, k.alg, n)
				if err != nil {
					t.Fatalf("round %d: Attest key %d: %v", round, i, err)
				}
				if err := attest.VerifyCertify(a, k.pub, n); err != nil {
					t.Fatalf("round %d: key %d: %v", round, i, err)
				}
				// Sign with this key (cached now) and with another one.
				for _, s := range []key{k, keys[(i+2)%len(keys)]} {
					if s.alg == keystore.ECDHP256 {
						ecdhCheck(t, b, s.alg, s.ref, s.pub)
						continue
					}
					signVerify(t, b, s.alg, s.ref, s.pub, fmt.Sprint("m", round, i))
				}
				if c := transientCount(t, b); c > 3 {
					t.Fatalf("round %d key %d: %d transient objects loaded, want at most 3", round, i, c)
				}
			}
		}
	})
}

// TestAttestEKCert stores a certificate at the ECC EK certificate index
// and checks that Attest returns it.
func TestAttestEKCert(t *testing.T) {
	eachTPM(t, func(t *testing.T, env *tpmEnv) {
		ctx := context.Background()
		b := env.open(t)
		ref, pub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		n := nonce(t, 32)
		a, err := b.Attest(ctx, ref, keystore.ECDSAP256, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Certificates) != 0 {
			t.Fatalf("%d certificates before one was stored", len(a.Certificates))
		}

		der := testCert(t)
		if err := b.do(ctx, "test", func() error { return writeNV(b, ekCertIndexECC, der) }); err != nil {
			t.Fatalf("storing the certificate: %v", err)
		}
		a, err = b.Attest(ctx, ref, keystore.ECDSAP256, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Certificates) != 1 || !bytes.Equal(a.Certificates[0], der) {
			t.Fatalf("got %d certificates, want the %d-byte one stored", len(a.Certificates), len(der))
		}
		if err := attest.VerifyCertify(a, pub, n); err != nil {
			t.Fatal(err)
		}
	})
}

// testCert is a self-signed certificate larger than one NV read chunk.
func testCert(t testing.TB) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test EK"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for i := 0; i < 30; i++ {
		tmpl.DNSNames = append(tmpl.DNSNames, fmt.Sprintf("name-%02d.example.com", i))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(der) <= nvChunk {
		t.Fatalf("test certificate is only %d bytes", len(der))
	}
	return der
}

func writeNV(b *Backend, idx tpm2.TPMHandle, data []byte) error {
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	_, err := tpm2.NVDefineSpace{
		AuthHandle: owner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: idx,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true,
				OwnerRead:  true,
				AuthRead:   true,
				NoDA:       true,
				NT:         tpm2.TPMNTOrdinary,
			},
			DataSize: uint16(len(data)),
		}),
	}.Execute(b.tpm)
	if err != nil {
		return fmt.Errorf("NV_DefineSpace: %w", err)
	}
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(b.tpm)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += nvChunk {
		end := min(off+nvChunk, len(data))
		_, err := tpm2.NVWrite{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: rp.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}.Execute(b.tpm)
		if err != nil {
			return fmt.Errorf("NV_Write: %w", err)
		}
	}
	return nil
}

// TestVerifyCertifySoftware runs attest.VerifyCertify without a TPM on statements
// re-signed by a software key posing as an AK: it shows what the checks
// catch, and that a valid result says nothing about the AK's origin.
func TestVerifyCertifySoftware(t *testing.T) {
	// One real attestation to start from.
	b := simEnv(t).open(t)
	ctx := context.Background()
	ref, pub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	n := nonce(t, 32)
	orig, err := b.Attest(ctx, ref, keystore.ECDSAP256, n)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()

	soft, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// forge re-signs the attestation with soft, after edit changes the
	// AK public area, the statement and the key public area.
	forge := func(edit func(ak *tpm2.TPMTPublic, st *tpm2.TPMSAttest, kp *tpm2.TPMTPublic)) *keystore.Attestation {
		t.Helper()
		ak := akTemplate()
		x, y := soft.PublicKey.X.FillBytes(make([]byte, 32)), soft.PublicKey.Y.FillBytes(make([]byte, 32))
		ak.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y},
		})
		st, err := tpm2.Unmarshal[tpm2.TPMSAttest](orig.Statement)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := tpm2.Unmarshal[tpm2.TPMTPublic](orig.KeyPublicArea)
		if err != nil {
			t.Fatal(err)
		}
		edit(&ak, st, kp)
		a := cloneAtt(orig)
		a.AttestationKey = tpm2.Marshal(ak)
		a.KeyPublicArea = tpm2.Marshal(*kp)
		if ci, err := st.Attested.Certify(); err == nil {
			name, err := testName(kp.NameAlg, a.KeyPublicArea)
			if err != nil {
				t.Fatal(err)
			}
			ci.Name = tpm2.TPM2BName{Buffer: name}
		}
		a.Statement = tpm2.Marshal(*st)
		d := sha256.Sum256(a.Statement)
		r, s, err := ecdsa.Sign(rand.Reader, soft, d[:])
		if err != nil {
			t.Fatal(err)
		}
		a.Signature = tpm2.Marshal(tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash:       tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
			}),
		})
		return a
	}
	nop := func(*tpm2.TPMTPublic, *tpm2.TPMSAttest, *tpm2.TPMTPublic) {}

	if err := attest.VerifyCertify(forge(nop), pub, n); err != nil {
		t.Fatalf("software-signed statement: %v (attest.VerifyCertify does not judge the AK's origin, so it should pass)", err)
	}
	if err := attest.VerifyCertify(nil, pub, n); !errors.Is(err, attest.ErrAttestation) {
		t.Fatalf("nil attestation: %v", err)
	}
	wantAttErr(t, "unrestricted AK", attest.VerifyCertify(forge(func(ak *tpm2.TPMTPublic, _ *tpm2.TPMSAttest, _ *tpm2.TPMTPublic) {
		ak.ObjectAttributes.Restricted = false
	}), pub, n), "attestation key: restricted=false")
	wantAttErr(t, "AK without fixedTPM", attest.VerifyCertify(forge(func(ak *tpm2.TPMTPublic, _ *tpm2.TPMSAttest, _ *tpm2.TPMTPublic) {
		ak.ObjectAttributes.FixedTPM = false
	}), pub, n), "fixedTPM=false")
	wantAttErr(t, "bad magic", attest.VerifyCertify(forge(func(_ *tpm2.TPMTPublic, st *tpm2.TPMSAttest, _ *tpm2.TPMTPublic) {
		st.Magic = 0x12345678
	}), pub, n), "magic")
	wantAttErr(t, "quote statement", attest.VerifyCertify(forge(func(_ *tpm2.TPMTPublic, st *tpm2.TPMSAttest, _ *tpm2.TPMTPublic) {
		st.Type = tpm2.TPMSTAttestQuote
		st.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{})
	}), pub, n), "type")
	wantAttErr(t, "key without sensitiveDataOrigin", attest.VerifyCertify(forge(func(_ *tpm2.TPMTPublic, _ *tpm2.TPMSAttest, kp *tpm2.TPMTPublic) {
		kp.ObjectAttributes.SensitiveDataOrigin = false
	}), pub, n), "sensitiveDataOrigin=false")
	wantAttErr(t, "RSA key", attest.VerifyCertify(forge(func(_ *tpm2.TPMTPublic, _ *tpm2.TPMSAttest, kp *tpm2.TPMTPublic) {
		kp.Type = tpm2.TPMAlgRSA
		kp.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
		})
		kp.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	}), pub, n), "want ECC")
	// Trailing bytes after an otherwise valid structure are refused.
	a := forge(nop)
	a.KeyPublicArea = append(a.KeyPublicArea, 0)
	wantAttErr(t, "trailing bytes", attest.VerifyCertify(a, pub, n), "key public area")
}

// testName is a TPM object Name (nameAlg || H(public area)), for statements
// the software test builds itself.
func testName(alg tpm2.TPMIAlgHash, public []byte) ([]byte, error) {
	if alg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("test names only SHA-256 keys, not 0x%04x", uint16(alg))
	}
	d := sha256.Sum256(public)
	return append([]byte{0x00, 0x0b}, d[:]...), nil
}
