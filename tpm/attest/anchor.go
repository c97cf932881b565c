package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Anchor kinds: what ties an attestation key to a trusted TPM.
const (
	// AnchorEKCertificate: the TPM's endorsement key certificate chains to
	// a trusted EK CA, and credential activation showed the attestation
	// key lives in the TPM that holds that endorsement key.
	AnchorEKCertificate = "ek-certificate"
	// AnchorPinnedAK: the attestation key is one the verifier enrolled
	// (pinned) earlier.
	AnchorPinnedAK = "pinned-ak"
)

// ErrNotAnchored is wrapped, with ErrAttestation, when a trust anchor was
// given and the attestation does not meet it.
var ErrNotAnchored = errors.New("not anchored to a trusted TPM")

func anchorErr(format string, args ...any) error {
	return fmt.Errorf("%w: %w: "+format, append([]any{ErrAttestation, ErrNotAnchored}, args...)...)
}

// Trust is what a verifier relies on. With neither EKRoots nor AK, Verify
// checks only that the evidence is consistent: anyone can make consistent
// evidence in software.
type Trust struct {
	// EKRoots are the CAs trusted to issue endorsement key certificates
	// (the TPM vendors' CAs). They need Activate as well.
	EKRoots *x509.CertPool
	// Activate has the TPM that made the evidence activate a credential
	// (TPM2_ActivateCredential with its AK and EK; mlskeyd's
	// ActivateCredential call) and returns what it decrypted.
	Activate func(credentialBlob, secret []byte) ([]byte, error)
	// AK is an attestation key enrolled earlier, e.g. after an
	// EK-anchored attestation of the same TPM.
	AK *ecdsa.PublicKey
	// Now is the time EK certificates are checked at (zero: now).
	Now time.Time
	// Rand is the source of the credential's secret (nil: crypto/rand).
	Rand io.Reader
}

// Result is every fact Verify checked.
type Result struct {
	// Anchored is true when the attestation key is tied to a trusted TPM
	// by each anchor in Trust; Anchor names them ("+"-joined).
	Anchored bool
	Anchor   string
	Nonce    []byte
	// AKName and KeyName are the TPM Names (nameAlg || digest) of the
	// attestation key and of the certified key.
	AKName, KeyName []byte
	// KeyAttributes are the certified key's object attributes that are
	// set (fixedTPM, fixedParent, sensitiveDataOrigin, ...).
	KeyAttributes []string
	// EKCertificate is the endorsement key certificate that chained to
	// Trust.EKRoots (nil without EK anchoring).
	EKCertificate *x509.Certificate
}

// Verify checks a "tpm2-certify" attestation as VerifyCertify does and
// then against each anchor in trust:
//
//   - AK: the attestation key must be the pinned one;
//   - EKRoots: the EndorsementKey must be the key of an EK certificate in
//     the evidence that chains to EKRoots, and a credential made for the
//     AK's Name and encrypted to that EK (TPM2_MakeCredential, done here
//     in software) must come back decrypted from trust.Activate. Only the
//     TPM holding both the EK and the AK can decrypt it, so software
//     evidence, or an AK of another TPM, fails here.
//
// Without an anchor the result has Anchored false and the error is nil:
// the evidence is consistent, which proves nothing about its origin. A
// failed anchor is an error wrapping ErrNotAnchored that says why.
func Verify(a *keystore.Attestation, mlsPublicKey, nonce []byte, trust Trust) (*Result, error) {
	if err := VerifyCertify(a, mlsPublicKey, nonce); err != nil {
		return nil, err
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.AttestationKey)
	if err != nil {
		return nil, attErr("attestation key: %v", err)
	}
	akName, err := nameOf(akPub.NameAlg, a.AttestationKey)
	if err != nil {
		return nil, err
	}
	kp, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.KeyPublicArea)
	if err != nil {
		return nil, attErr("key public area: %v", err)
	}
	keyName, err := nameOf(kp.NameAlg, a.KeyPublicArea)
	if err != nil {
		return nil, err
	}
	res := &Result{Nonce: nonce, AKName: akName, KeyName: keyName, KeyAttributes: attributeNames(kp.ObjectAttributes)}
	var anchors []string
	if trust.AK != nil {
		ak, err := AttestationKeyPublic(a)
		if err != nil {
			return nil, err
		}
		if !ak.Equal(trust.AK) {
			return nil, anchorErr("the attestation key is not the pinned one (another TPM's, or not made by a TPM)")
		}
		anchors = append(anchors, AnchorPinnedAK)
	}
	if trust.EKRoots != nil {
		cert, err := verifyEK(a, trust)
		if err != nil {
			return nil, err
		}
		if err := activate(a, akName, trust); err != nil {
			return nil, err
		}
		res.EKCertificate = cert
		anchors = append(anchors, AnchorEKCertificate)
	}
	res.Anchored = len(anchors) > 0
	res.Anchor = strings.Join(anchors, "+")
	return res, nil
}

// verifyEK finds the certificate of the evidence's endorsement key and
// checks its chain to trust.EKRoots.
func verifyEK(a *keystore.Attestation, trust Trust) (*x509.Certificate, error) {
	if len(a.EndorsementKey) == 0 {
		return nil, anchorErr("the evidence has no endorsement key")
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.EndorsementKey)
	if err != nil || !bytes.Equal(tpm2.Marshal(*ek), a.EndorsementKey) {
		return nil, anchorErr("endorsement key: not a TPMT_PUBLIC")
	}
	if at := ek.ObjectAttributes; !at.FixedTPM || !at.Restricted || !at.Decrypt || at.SignEncrypt {
		return nil, anchorErr("endorsement key: not a restricted, fixedTPM decryption key")
	}
	ekKey, err := publicKeyOf(ek)
	if err != nil {
		return nil, anchorErr("endorsement key: %v", err)
	}
	var cert *x509.Certificate
	inter := x509.NewCertPool()
	for i, der := range a.Certificates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, anchorErr("certificate %d: %v", i, err)
		}
		if k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(ekKey) {
			cert = c
		} else {
			inter.AddCert(c)
		}
	}
	if cert == nil {
		return nil, anchorErr("no EK certificate in the evidence is for its endorsement key")
	}
	// The TCG EK profile leaves the subject empty and names the TPM's
	// manufacturer, model and version in a critical subjectAltName that
	// holds only a directoryName, which Go leaves unhandled. The names
	// are informational; the chain is what is checked.
	cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
		func(oid asn1.ObjectIdentifier) bool { return oid.Equal(oidSubjectAltName) })
	// An EK certificate's extended key usage is the TCG's own
	// (tcg-kp-EKCertificate), which Go does not know: any is accepted.
	_, err = cert.Verify(x509.VerifyOptions{
		Roots: trust.EKRoots, Intermediates: inter,
		CurrentTime: trust.Now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, anchorErr("the EK certificate (issuer %q) does not chain to a trusted EK CA: %v", cert.Issuer.String(), err)
	}
	return cert, nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// activate makes a credential for the AK's Name, encrypted to the EK, and
// checks that the TPM gives back its secret.
func activate(a *keystore.Attestation, akName []byte, trust Trust) error {
	if trust.Activate == nil {
		return anchorErr("EK anchoring needs credential activation by the TPM that made the evidence (run 'mlskeyctl key attest' against the daemon), or pin the attestation key")
	}
	ek, _ := tpm2.Unmarshal[tpm2.TPMTPublic](a.EndorsementKey)
	key, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return anchorErr("endorsement key: %v", err)
	}
	rnd := trust.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	secret := make([]byte, 32)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return err
	}
	blob, encSecret, err := tpm2.CreateCredential(rnd, key, akName, secret)
	if err != nil {
		return anchorErr("making the credential: %v", err)
	}
	got, err := trust.Activate(blob, encSecret)
	if err != nil {
		return anchorErr("credential activation failed, so the attestation key does not live beside the certified endorsement key: %v", err)
	}
	if subtle.ConstantTimeCompare(got, secret) != 1 {
		return anchorErr("credential activation returned a wrong secret: the attestation key does not live beside the certified endorsement key")
	}
	return nil
}

// publicKeyOf returns the crypto public key of an RSA or ECC public area.
func publicKeyOf(p *tpm2.TPMTPublic) (any, error) {
	switch p.Type {
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		n, err := p.Unique.RSA()
		if err != nil {
			return nil, err
		}
		e := int(parms.Exponent)
		if e == 0 {
			e = 65537
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n.Buffer), E: e}, nil
	case tpm2.TPMAlgECC:
		pt, err := eccPoint(p)
		if err != nil {
			return nil, err
		}
		parms, _ := p.Parameters.ECCDetail()
		curve, err := parms.CurveID.Curve()
		if err != nil {
			return nil, err
		}
		return ecdsa.ParseUncompressedPublicKey(curve, pt)
	}
	return nil, fmt.Errorf("type 0x%04x, want RSA or ECC", uint16(p.Type))
}

func attributeNames(at tpm2.TPMAObject) []string {
	var out []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{at.FixedTPM, "fixedTPM"}, {at.STClear, "stClear"}, {at.FixedParent, "fixedParent"},
		{at.SensitiveDataOrigin, "sensitiveDataOrigin"}, {at.UserWithAuth, "userWithAuth"},
		{at.AdminWithPolicy, "adminWithPolicy"}, {at.NoDA, "noDA"}, {at.EncryptedDuplication, "encryptedDuplication"},
		{at.Restricted, "restricted"}, {at.Decrypt, "decrypt"}, {at.SignEncrypt, "sign"},
	} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}
