package mls

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"
)

// hexBytes decodes the vectors' hex strings.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

func loadJSON(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func mustSuite(t testing.TB, id CipherSuite) *Suite {
	t.Helper()
	s, err := LookupSuite(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// opaqueSigner hides the concrete key type, as a device-backed signer would.
type opaqueSigner struct {
	inner crypto.Signer
	calls atomic.Int32
}

func (o *opaqueSigner) Public() crypto.PublicKey { return o.inner.Public() }
func (o *opaqueSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	o.calls.Add(1)
	return o.inner.Sign(r, digest, opts)
}

// opaqueKX exposes only the ecdh.KeyExchanger methods.
type opaqueKX struct {
	k     *ecdh.PrivateKey
	calls atomic.Int32
}

func (o *opaqueKX) PublicKey() *ecdh.PublicKey { return o.k.PublicKey() }
func (o *opaqueKX) Curve() ecdh.Curve          { return o.k.Curve() }
func (o *opaqueKX) ECDH(p *ecdh.PublicKey) ([]byte, error) {
	o.calls.Add(1)
	return o.k.ECDH(p)
}

type opaqueX448 struct {
	k     *X448PrivateKey
	calls atomic.Int32
}

func (o *opaqueX448) X448PublicKey() []byte { return o.k.X448PublicKey() }
func (o *opaqueX448) X448(peer []byte) ([]byte, error) {
	o.calls.Add(1)
	return o.k.X448(peer)
}

// counted is implemented by both opaque HPKE wrappers.
type counted interface{ count() int32 }

func (o *opaqueKX) count() int32   { return o.calls.Load() }
func (o *opaqueX448) count() int32 { return o.calls.Load() }

// hpkeKey wraps a serialized HPKE private key in the opaque handle type the
// suite needs.
func hpkeKey(t testing.TB, s *Suite, priv []byte) (any, counted) {
	t.Helper()
	if s.KEM == KEMX448 {
		k, err := NewX448PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		o := &opaqueX448{k: k}
		return o, o
	}
	k, err := s.kemCurve().NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	o := &opaqueKX{k: k}
	return o, o
}

// newHPKEKey generates a software HPKE key, returning the opaque handle and
// the public key bytes.
func newHPKEKey(t testing.TB, s *Suite) (any, []byte) {
	t.Helper()
	if s.KEM == KEMX448 {
		k, err := GenerateX448Key()
		if err != nil {
			t.Fatal(err)
		}
		return &opaqueX448{k: k}, k.X448PublicKey()
	}
	k, err := s.kemCurve().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &opaqueKX{k: k}, k.PublicKey().Bytes()
}

// signerFromPriv imports a vector's signature private key.
func signerFromPriv(t testing.TB, s *Suite, priv []byte) crypto.Signer {
	t.Helper()
	switch s.SignatureScheme {
	case SchemeEd25519:
		return ed25519.NewKeyFromSeed(priv)
	case SchemeEd448:
		return ed448.NewKeyFromSeed(priv)
	}
	k, err := ecdsa.ParseRawPrivateKey(s.ecdsaCurve(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newSigner generates a software signing key and its SignaturePublicKey.
func newSigner(t testing.TB, s *Suite) (crypto.Signer, []byte) {
	t.Helper()
	switch s.SignatureScheme {
	case SchemeEd25519:
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return priv, pub
	case SchemeEd448:
		pub, priv, err := ed448.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return priv, pub
	}
	k, err := ecdsa.GenerateKey(s.ecdsaCurve(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return k, pub
}
