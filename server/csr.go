package server

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/mail"
	"net/url"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/keystore"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// csrLabel names CreateCSR's signature in audit records, beside the MLS
// labels of the other signing and decrypting calls.
const csrLabel = "CSR"

// Bounds for CreateCSR: names are short strings, and a handful of them is
// all a credential for one MLS client needs.
const (
	maxCSRName  = 256
	maxCSRNames = 32
)

// CreateCSR signs a PKCS#10 request that the daemon builds itself around
// the key's own public key. The caller chooses only names, so the key never
// signs caller-chosen bytes outside MLS's labelled structures: a request is
// a DER SEQUENCE, which no SignContent (a length-prefixed "MLS 1.0 " label)
// can be mistaken for.
func (s *Service) CreateCSR(ctx context.Context, req *pb.CreateCSRRequest) (*pb.CreateCSRResponse, error) {
	r, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName:         req.GetCommonName(),
			Organization:       req.GetOrganization(),
			OrganizationalUnit: req.GetOrganizationalUnit(),
			Country:            req.GetCountry(),
		},
		DNSNames:       req.GetDnsNames(),
		EmailAddresses: req.GetEmailAddresses(),
	}
	total := 0
	for _, f := range []struct {
		name string
		v    []string
	}{
		{"common_name", []string{req.GetCommonName()}},
		{"organization", req.GetOrganization()},
		{"organizational_unit", req.GetOrganizationalUnit()},
		{"country", req.GetCountry()},
		{"dns_names", req.GetDnsNames()},
		{"email_addresses", req.GetEmailAddresses()},
		{"uris", req.GetUris()},
	} {
		for i, v := range f.v {
			if f.name == "common_name" && v == "" {
				continue
			}
			total++
			switch {
			case v == "":
				return nil, invalid(f.name, "entry %d is empty", i)
			case len(v) > maxCSRName:
				return nil, invalid(f.name, "entry %d is %d bytes, over the limit of %d", i, len(v), maxCSRName)
			case !utf8.ValidString(v):
				return nil, invalid(f.name, "entry %d is not UTF-8", i)
			}
		}
	}
	switch {
	case total == 0:
		return nil, invalid("common_name", "empty, and no alternative names: the request would name no one")
	case total > maxCSRNames:
		return nil, invalid("dns_names", "%d names in all, over the limit of %d", total, maxCSRNames)
	}
	for i, c := range req.GetCountry() {
		if len(c) != 2 {
			return nil, invalid("country", "entry %d: %q is not a two-letter country code", i, c)
		}
	}
	for i, e := range req.GetEmailAddresses() {
		if a, err := mail.ParseAddress(e); err != nil || a.Address != e {
			return nil, invalid("email_addresses", "entry %d: %q is not a plain e-mail address", i, e)
		}
	}
	for i, u := range req.GetUris() {
		parsed, err := url.Parse(u)
		if err != nil || !parsed.IsAbs() {
			return nil, invalid("uris", "entry %d: %q is not an absolute URI", i, u)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	if r.Role != keystore.RoleSignature {
		return nil, statusOf("key_id", r.Usable(keystore.RoleSignature))
	}
	if err := r.Usable(keystore.RoleSignature); err != nil {
		return nil, statusOf("key_id", err)
	}
	if r.Algorithm == keystore.Ed448 {
		return nil, status.Errorf(codes.FailedPrecondition, "key_id: key %s is an Ed448 key; X.509 requests need Ed25519 or ECDSA (suites 1, 2, 3, 5, 7)", r.ID)
	}
	signer, err := s.store.SignerFor(ctx, r)
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	return &pb.CreateCSRResponse{Csr: der}, nil
}
