package client

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/ed448"

	"github.com/mlskeyd/mlskeyd/mls"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// SignatureKey is a leaf signature key held by the daemon, for MLS code
// that signs with SignWithLabel and knows nothing of gRPC.
type SignatureKey struct {
	c     *Client
	key   *mlskeyv1.Key
	suite *mls.Suite
	pub   crypto.PublicKey
}

// HPKEKey is an init or leaf encryption key held by the daemon.
type HPKEKey struct {
	c     *Client
	key   *mlskeyv1.Key
	suite *mls.Suite
}

// SignatureKey returns the daemon's signature key id.
func (c *Client) SignatureKey(ctx context.Context, id string) (*SignatureKey, error) {
	k, err := c.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return c.signatureKey(k)
}

// NewSignatureKey creates a signature key for suite in the device.
func (c *Client) NewSignatureKey(ctx context.Context, suite mls.CipherSuite) (*SignatureKey, error) {
	k, err := c.CreateSignatureKey(ctx, &mlskeyv1.CreateSignatureKeyRequest{CipherSuite: uint32(suite)})
	if err != nil {
		return nil, err
	}
	return c.signatureKey(k)
}

func (c *Client) signatureKey(k *mlskeyv1.Key) (*SignatureKey, error) {
	if k.GetRole() != mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE {
		return nil, fmt.Errorf("mlskeyd client: key %s is a %v key, not a signature key", k.GetId(), k.GetRole())
	}
	su, err := mls.LookupSuite(mls.CipherSuite(k.GetCipherSuite()))
	if err != nil {
		return nil, fmt.Errorf("mlskeyd client: key %s: %w", k.GetId(), err)
	}
	pub, err := signaturePublicKey(su, k.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("mlskeyd client: key %s: %w", k.GetId(), err)
	}
	return &SignatureKey{c: c, key: k, suite: su, pub: pub}, nil
}

func signaturePublicKey(su *mls.Suite, b []byte) (crypto.PublicKey, error) {
	switch su.SignatureAlgorithm {
	case "ed25519":
		if len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 public key of %d bytes", len(b))
		}
		return ed25519.PublicKey(append([]byte(nil), b...)), nil
	case "ed448":
		if len(b) != ed448.PublicKeySize {
			return nil, fmt.Errorf("Ed448 public key of %d bytes", len(b))
		}
		return ed448.PublicKey(append([]byte(nil), b...)), nil
	case "ecdsa-p256":
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
	case "ecdsa-p384":
		return ecdsa.ParseUncompressedPublicKey(elliptic.P384(), b)
	case "ecdsa-p521":
		return ecdsa.ParseUncompressedPublicKey(elliptic.P521(), b)
	}
	return nil, fmt.Errorf("signature algorithm %q", su.SignatureAlgorithm)
}

// ID is the daemon's key id.
func (k *SignatureKey) ID() string { return k.key.GetId() }

// Suite is the key's cipher suite.
func (k *SignatureKey) Suite() mls.CipherSuite { return k.suite.ID }

// PublicKey is the key as it appears in MLS structures (SignaturePublicKey
// without its length prefix).
func (k *SignatureKey) PublicKey() []byte { return append([]byte(nil), k.key.GetPublicKey()...) }

// Key is the daemon's record of the key when it was looked up.
func (k *SignatureKey) Key() *mlskeyv1.Key { return k.key }

// SignWithLabel returns Signature.Sign(key, SignContent{"MLS 1.0 " + label,
// content}) in its MLS encoding; label is one of RFC 9420's signature labels
// without the prefix, e.g. "FramedContentTBS".
func (k *SignatureKey) SignWithLabel(ctx context.Context, label string, content []byte) ([]byte, error) {
	return k.c.Sign(ctx, k.ID(), label, content)
}

// CSR describes the certification request CreateCSR asks the daemon for.
type CSR struct {
	CommonName         string
	Organization       []string
	OrganizationalUnit []string
	Country            []string
	DNSNames           []string
	EmailAddresses     []string
	URIs               []string
}

// CreateCSR has the daemon build and sign a PKCS#10 request for this key's
// own public key. It returns the DER and the parsed request, whose
// signature and public key it has checked.
func (k *SignatureKey) CreateCSR(ctx context.Context, r CSR) ([]byte, *x509.CertificateRequest, error) {
	resp, err := k.c.KeyServiceClient.CreateCSR(ctx, &mlskeyv1.CreateCSRRequest{
		KeyId:              k.ID(),
		CommonName:         r.CommonName,
		Organization:       r.Organization,
		OrganizationalUnit: r.OrganizationalUnit,
		Country:            r.Country,
		DnsNames:           r.DNSNames,
		EmailAddresses:     r.EmailAddresses,
		Uris:               r.URIs,
	})
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(resp.GetCsr())
	if err != nil {
		return nil, nil, fmt.Errorf("mlskeyd client: the daemon's CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("mlskeyd client: the daemon's CSR: %w", err)
	}
	if eq, ok := csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(k.pub) {
		return nil, nil, fmt.Errorf("mlskeyd client: the daemon's CSR is not for key %s", k.ID())
	}
	return resp.GetCsr(), csr, nil
}

// ErrNotMLS is returned by the crypto.Signer view's Sign: the daemon signs
// only RFC 9420 structures (SignWithLabel) and its own CSRs (CreateCSR).
var ErrNotMLS = errors.New("mlskeyd signs only MLS structures (SignWithLabel) and its own certification requests (CreateCSR)")

// Signer is a crypto.Signer view of the key for X.509 work: Public gives
// the key as crypto/x509 expects it (to put into a certificate a CA issues,
// or to match a chain's end-entity key). Sign fails with ErrNotMLS, since
// the daemon does not sign arbitrary digests; use CreateCSR for a request.
func (k *SignatureKey) Signer() crypto.Signer { return signerView{k} }

type signerView struct{ k *SignatureKey }

func (s signerView) Public() crypto.PublicKey { return s.k.pub }

func (s signerView) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, fmt.Errorf("mlskeyd client: key %s: %w", s.k.ID(), ErrNotMLS)
}

// HPKEKey returns the daemon's init or leaf encryption key id.
func (c *Client) HPKEKey(ctx context.Context, id string) (*HPKEKey, error) {
	k, err := c.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: id})
	if err != nil {
		return nil, err
	}
	if r := k.GetRole(); r != mlskeyv1.KeyRole_KEY_ROLE_INIT && r != mlskeyv1.KeyRole_KEY_ROLE_LEAF_ENCRYPTION {
		return nil, fmt.Errorf("mlskeyd client: key %s is a %v key, not an HPKE key", id, r)
	}
	su, err := mls.LookupSuite(mls.CipherSuite(k.GetCipherSuite()))
	if err != nil {
		return nil, fmt.Errorf("mlskeyd client: key %s: %w", id, err)
	}
	return &HPKEKey{c: c, key: k, suite: su}, nil
}

// ID is the daemon's key id.
func (k *HPKEKey) ID() string { return k.key.GetId() }

// Suite is the key's cipher suite.
func (k *HPKEKey) Suite() mls.CipherSuite { return k.suite.ID }

// PublicKey is the HPKEPublicKey as it appears in MLS structures.
func (k *HPKEKey) PublicKey() []byte { return append([]byte(nil), k.key.GetPublicKey()...) }

// Key is the daemon's record of the key when it was looked up.
func (k *HPKEKey) Key() *mlskeyv1.Key { return k.key }

// DecryptWithLabel opens an UpdatePath ciphertext addressed to this leaf
// encryption key: HPKE OpenBase with info EncryptContext{"MLS 1.0 " + label,
// context}. The daemon serves only the label "UpdatePathNode"; Welcome
// secrets are opened with OpenMLSWelcome, which consumes the init key.
func (k *HPKEKey) DecryptWithLabel(ctx context.Context, label string, context, kemOutput, ciphertext []byte) ([]byte, error) {
	r, err := k.c.KeyServiceClient.DecryptWithLabel(ctx, &mlskeyv1.DecryptWithLabelRequest{
		KeyId: k.ID(), Label: label, Context: context, KemOutput: kemOutput, Ciphertext: ciphertext,
	})
	if err != nil {
		return nil, err
	}
	return r.GetPlaintext(), nil
}
