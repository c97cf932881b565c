package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

func certPool(t *testing.T, pem []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no certificates in the CA bundle")
	}
	return p
}

// wantNotAnchored checks that err says the attestation is not anchored,
// and why.
func wantNotAnchored(t *testing.T, what string, err error, substr string) {
	t.Helper()
	if !errors.Is(err, attest.ErrNotAnchored) || !errors.Is(err, attest.ErrAttestation) {
		t.Fatalf("%s: attest.Verify = %v, want attest.ErrNotAnchored", what, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("%s: attest.Verify = %q, want it to mention %q", what, err, substr)
	}
}

// forgeEvidence makes, in software alone, what a TPM would return for
// TPM2_Certify: a "restricted, fixedTPM" AK public area around a software
// ECDSA key, certifying a "fixedTPM, sensitiveDataOrigin" public area
// around another software key, bound to nonce. It is internally
// consistent; nothing but a trust anchor can tell it from real evidence.
func forgeEvidence(t *testing.T, nonce []byte) (*keystore.Attestation, []byte) {
	t.Helper()
	akKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	point := func(k *ecdsa.PrivateKey) tpm2.TPMUPublicID {
		return tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
		})
	}
	ak := akTemplate()
	ak.Unique = point(akKey)
	spec, err := specFor(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	kp := spec.template()
	kp.Unique = point(key)
	kpBytes := tpm2.Marshal(kp)
	name, err := testName(kp.NameAlg, kpBytes)
	if err != nil {
		t.Fatal(err)
	}
	st := tpm2.Marshal(tpm2.TPMSAttest{
		Magic:     tpm2.TPMGeneratedValue,
		Type:      tpm2.TPMSTAttestCertify,
		ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
			Name: tpm2.TPM2BName{Buffer: name}, QualifiedName: tpm2.TPM2BName{Buffer: name},
		}),
	})
	d := sha256.Sum256(st)
	r, s, err := ecdsa.Sign(rand.Reader, akKey, d[:])
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey.Bytes()
	return &keystore.Attestation{
		Format:         attest.Format,
		Statement:      st,
		AttestationKey: tpm2.Marshal(ak),
		KeyPublicArea:  kpBytes,
		Signature: tpm2.Marshal(tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash:       tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
			}),
		}),
	}, pub
}

// TestAttestAnchored runs the whole verification against swtpm TPMs
// manufactured by swtpm_setup with EK certificates from a local CA: the
// real chain verifies; forged evidence, a wrong nonce, an AK of another
// TPM and an untrusted EK CA all fail, each saying why.
func TestAttestAnchored(t *testing.T) {
	ctx := context.Background()
	swA, caA := swtpm.StartManufactured(t, t.TempDir())
	swB, caB := swtpm.StartManufactured(t, t.TempDir())
	b := openCfg(t, Config{Device: swA.Device()})
	other := openCfg(t, Config{Device: swB.Device()})
	rootsA, rootsB := certPool(t, caA.Bundle()), certPool(t, caB.Bundle())

	ref, pub, err := b.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	n := nonce(t, 32)
	a, err := b.Attest(ctx, ref, keystore.ECDSAP256, n)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.EndorsementKey) == 0 || len(a.Certificates) == 0 {
		t.Fatalf("evidence without EK (%d bytes) or EK certificates (%d)", len(a.EndorsementKey), len(a.Certificates))
	}
	activateA := func(blob, secret []byte) ([]byte, error) {
		return b.ActivateCredential(ctx, a.EndorsementKey, blob, secret)
	}
	trustA := attest.Trust{EKRoots: rootsA, Activate: activateA}

	// The real chain.
	loaded := transientCount(t, b)
	res, err := attest.Verify(a, pub, n, trustA)
	if err != nil {
		t.Fatalf("real evidence, trusted EK CA: %v", err)
	}
	if !res.Anchored || res.Anchor != attest.AnchorEKCertificate || res.EKCertificate == nil {
		t.Fatalf("real evidence: anchored=%v anchor=%q", res.Anchored, res.Anchor)
	}
	if len(res.AKName) != 34 || len(res.KeyName) != 34 || !strings.Contains(strings.Join(res.KeyAttributes, ","), "fixedTPM") {
		t.Fatalf("result facts: %+v", res)
	}
	if got := transientCount(t, b); got > loaded {
		t.Fatalf("activation left objects loaded: %d transient objects, %d before", got, loaded)
	}
	// Without an anchor: consistent, not anchored.
	if res, err := attest.Verify(a, pub, n, attest.Trust{}); err != nil || res.Anchored {
		t.Fatalf("no anchor: anchored=%v err=%v", res != nil && res.Anchored, err)
	}
	// The AK, enrolled, pins the TPM.
	akA, err := attest.AttestationKeyPublic(a)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := attest.Verify(a, pub, n, attest.Trust{AK: akA}); err != nil || res.Anchor != attest.AnchorPinnedAK {
		t.Fatalf("pinned AK: %v", err)
	}

	// A wrong nonce.
	wantAttErr(t, "wrong nonce", func() error { _, err := attest.Verify(a, pub, nonce(t, 32), trustA); return err }(), "nonce")

	// An EK CA the verifier does not trust.
	_, err = attest.Verify(a, pub, n, attest.Trust{EKRoots: rootsB, Activate: activateA})
	wantNotAnchored(t, "untrusted EK CA", err, "does not chain to a trusted EK CA")

	// EK anchoring without the TPM to activate the credential.
	_, err = attest.Verify(a, pub, n, attest.Trust{EKRoots: rootsA})
	wantNotAnchored(t, "no activation", err, "credential activation")

	// An AK of another TPM: B's genuine evidence, presented with A's
	// certified EK. A cannot activate a credential for B's AK.
	refB, pubB, err := other.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	aB, err := other.Attest(ctx, refB, keystore.ECDSAP256, n)
	if err != nil {
		t.Fatal(err)
	}
	mixed := cloneAtt(aB)
	mixed.EndorsementKey, mixed.Certificates = a.EndorsementKey, a.Certificates
	_, err = attest.Verify(mixed, pubB, n, trustA)
	wantNotAnchored(t, "AK of another TPM", err, "credential activation failed")
	_, err = attest.Verify(aB, pubB, n, attest.Trust{AK: akA})
	wantNotAnchored(t, "AK of another TPM, pinned", err, "not the pinned one")
	// B's own evidence, activated by B, chains only to B's CA.
	activateB := func(blob, secret []byte) ([]byte, error) {
		return other.ActivateCredential(ctx, aB.EndorsementKey, blob, secret)
	}
	if _, err := attest.Verify(aB, pubB, n, attest.Trust{EKRoots: rootsB, Activate: activateB}); err != nil {
		t.Fatalf("TPM B with its own CA: %v", err)
	}
	_, err = attest.Verify(aB, pubB, n, attest.Trust{EKRoots: rootsA, Activate: activateB})
	wantNotAnchored(t, "TPM B against A's CA", err, "does not chain")

	// Evidence forged in software, with A's EK and its real certificate
	// attached: consistent, and nothing more.
	forged, fpub := forgeEvidence(t, n)
	forged.EndorsementKey, forged.Certificates = a.EndorsementKey, a.Certificates
	if res, err := attest.Verify(forged, fpub, n, attest.Trust{}); err != nil || res.Anchored {
		t.Fatalf("forged evidence should be consistent and unanchored: %v", err)
	}
	_, err = attest.Verify(forged, fpub, n, trustA)
	wantNotAnchored(t, "forged evidence, activated by the real TPM", err, "credential activation failed")
	_, err = attest.Verify(forged, fpub, n, attest.Trust{EKRoots: rootsA, Activate: func(_, _ []byte) ([]byte, error) {
		return make([]byte, 32), nil // a forger without the TPM can only guess
	}})
	wantNotAnchored(t, "forged evidence, forged activation", err, "wrong secret")
	_, err = attest.Verify(forged, fpub, n, attest.Trust{AK: akA})
	wantNotAnchored(t, "forged evidence, pinned AK", err, "not the pinned one")

	// The daemon refuses an EK that is not its own.
	if _, err := b.ActivateCredential(ctx, aB.EndorsementKey, []byte{0, 1}, []byte{0, 1}); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("another TPM's EK: %v", err)
	}
}

// BenchmarkAttestAnchored is one EK-anchored attestation: TPM2_Certify,
// then credential activation (AK and RSA EK re-created each time).
func BenchmarkAttestAnchored(b *testing.B) {
	sw, ca := swtpm.StartManufactured(b, b.TempDir())
	be := openCfg(b, Config{Device: sw.Device()})
	ctx := context.Background()
	ref, pub, err := be.Generate(ctx, "k", keystore.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.Bundle())
	for b.Loop() {
		n := nonce(b, 32)
		a, err := be.Attest(ctx, ref, keystore.ECDSAP256, n)
		if err != nil {
			b.Fatal(err)
		}
		_, err = attest.Verify(a, pub, n, attest.Trust{EKRoots: roots, Activate: func(blob, secret []byte) ([]byte, error) {
			return be.ActivateCredential(ctx, a.EndorsementKey, blob, secret)
		}})
		if err != nil {
			b.Fatal(err)
		}
	}
}
