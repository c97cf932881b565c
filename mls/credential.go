package mls

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
)

// Credential types (RFC 9420 §5.3).
const (
	CredentialTypeBasic uint16 = 1
	CredentialTypeX509  uint16 = 2
)

// Credential is a basic or X.509 credential. Other credential types have no
// length prefix on the wire, so they cannot be skipped and fail to decode.
type Credential struct {
	Type         uint16
	Identity     []byte   // basic
	Certificates [][]byte // x509: DER certificates, end-entity first
}

func (c *Credential) encode(w *Writer) {
	w.U16(c.Type)
	switch c.Type {
	case CredentialTypeBasic:
		w.Vector(c.Identity)
	case CredentialTypeX509:
		sub := NewWriter()
		for _, cert := range c.Certificates {
			sub.Vector(cert)
		}
		w.VectorFrom(sub)
	}
}

func decodeCredential(d *decoder) Credential {
	var c Credential
	c.Type = d.u16("Credential.credential_type")
	switch {
	case d.err != nil:
	case c.Type == CredentialTypeBasic:
		c.Identity = d.vec("Credential.identity")
	case c.Type == CredentialTypeX509:
		d.list("Credential.certificates", MaxCertificates, func(d *decoder) {
			if cert := d.vec("Certificate.cert_data"); d.err == nil {
				c.Certificates = append(c.Certificates, cert)
			}
		})
	default:
		d.failf("Credential.credential_type", "unsupported credential type %d", c.Type)
	}
	return c
}

// checkCredential applies §5.3: a basic credential is taken as is; an X.509
// credential's end-entity certificate must carry signatureKey, so a
// credential cannot vouch for a key other than the one that signs.
func checkCredential(c *Credential, signatureKey []byte) error {
	switch c.Type {
	case CredentialTypeBasic:
		return nil
	case CredentialTypeX509:
		if len(c.Certificates) == 0 {
			return fmt.Errorf("x509 credential without certificates")
		}
		key, err := certificatePublicKey(c.Certificates[0])
		if err != nil {
			return fmt.Errorf("x509 credential: %w", err)
		}
		if !bytes.Equal(key, signatureKey) {
			return fmt.Errorf("x509 credential: certificate public key differs from signature_key")
		}
		return nil
	}
	return fmt.Errorf("unsupported credential type %d", c.Type)
}

// certificatePublicKey returns the subjectPublicKey BIT STRING of a
// certificate. For EdDSA that is the RFC 8032 key and for ECDSA the
// uncompressed point, i.e. exactly MLS's SignaturePublicKey; going through
// the raw SPKI also covers Ed448, which crypto/x509 does not parse.
func certificatePublicKey(der []byte) ([]byte, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 || spki.PublicKey.BitLength%8 != 0 {
		return nil, fmt.Errorf("malformed subjectPublicKeyInfo")
	}
	return spki.PublicKey.Bytes, nil
}
