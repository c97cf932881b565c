package mls

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

func testParams(t testing.TB, s *Suite) (KeyPackageParams, crypto.Signer, any, any) {
	t.Helper()
	signer, spub := newSigner(t, s)
	initPriv, initPub := newHPKEKey(t, s)
	encPriv, encPub := newHPKEKey(t, s)
	now := uint64(time.Now().Unix())
	return KeyPackageParams{
		Suite:         s.ID,
		InitKey:       initPub,
		EncryptionKey: encPub,
		SignatureKey:  spub,
		Credential:    Credential{Type: CredentialTypeBasic, Identity: []byte("alice")},
		Lifetime:      Lifetime{NotBefore: now - 3600, NotAfter: now + 90*24*3600},
	}, signer, initPriv, encPriv
}

func TestNewKeyPackageAllSuites(t *testing.T) {
	for _, s := range Suites() {
		t.Run(s.Name, func(t *testing.T) {
			p, signer, initPriv, _ := testParams(t, s)
			p.LastResort = true
			p.LeafExtensions = []Extension{{Type: 1, Data: []byte("app-id")}, {Type: 0xff01, Data: []byte{1}}}
			p.Capabilities = Capabilities{CipherSuites: []uint16{1, uint16(s.ID)}, Proposals: []uint16{0xff10}, Extensions: []uint16{0xff01, 0xff02}, Credentials: []uint16{2}}
			os := &opaqueSigner{inner: signer}
			kp, err := NewKeyPackage(p, os)
			if err != nil {
				t.Fatalf("NewKeyPackage: %v", err)
			}
			if os.calls.Load() != 2 {
				t.Errorf("signer called %d times, want 2", os.calls.Load())
			}
			if err := kp.Verify(time.Now()); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !kp.HasExtension(ExtensionLastResort) {
				t.Error("last_resort extension missing")
			}
			c := kp.LeafNode.Capabilities
			wantExt := []uint16{0xff01, ExtensionLastResort, 0xff02}
			if !equalU16(c.Versions, []uint16{1}) || c.CipherSuites[0] != uint16(s.ID) || !equalU16(c.Extensions, wantExt) ||
				!equalU16(c.Proposals, []uint16{0xff10}) || !equalU16(c.Credentials, []uint16{1, 2}) {
				t.Errorf("capabilities = %+v", c)
			}
			if s.ID != 1 && !equalU16(c.CipherSuites, []uint16{uint16(s.ID), 1}) {
				t.Errorf("cipher_suites = %v", c.CipherSuites)
			}
			enc := kp.Marshal()
			back, err := UnmarshalKeyPackage(enc)
			if err != nil || !bytes.Equal(back.Marshal(), enc) {
				t.Fatalf("round trip: %v", err)
			}
			if err := back.Verify(time.Time{}); err != nil {
				t.Errorf("decoded Verify: %v", err)
			}
			msg := KeyPackageMessage(kp)
			if !bytes.Equal(msg[:4], []byte{0, 1, 0, 5}) || !bytes.Equal(msg[4:], enc) {
				t.Error("KeyPackageMessage framing")
			}

			// A Welcome to this KeyPackage opens through the opaque init key.
			gs := &GroupSecrets{JoinerSecret: bytes.Repeat([]byte{7}, s.HashSize())}
			w := &Welcome{CipherSuite: s.ID, EncryptedGroupInfo: []byte("egi")}
			kem, ct, err := s.EncryptWithLabel(kp.InitKey, LabelWelcome, w.EncryptedGroupInfo, gs.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			ref, _ := kp.Ref()
			w.Secrets = []EncryptedGroupSecrets{{NewMember: ref, KEMOutput: kem, Ciphertext: ct}}
			got, err := s.OpenGroupSecrets(w, w.Find(ref), initPriv)
			if err != nil || !bytes.Equal(got.JoinerSecret, gs.JoinerSecret) {
				t.Fatalf("OpenGroupSecrets: %v", err)
			}

			// Verify failure modes.
			if err := kp.Verify(time.Now().Add(100 * 24 * time.Hour)); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("expired: %v", err)
			}
			bad := *back
			bad.Signature = append([]byte{}, kp.Signature...)
			bad.Signature[len(bad.Signature)/2] ^= 1
			if err := bad.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) || !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("bad signature: %v", err)
			}
			bad = *back
			bad.LeafNode.Capabilities.Credentials = []uint16{2}
			if err := bad.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("credential not listed: %v", err)
			}
			bad = *back
			bad.Extensions = append([]Extension{{Type: 0xff77}}, bad.Extensions...)
			if err := bad.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("unlisted extension: %v", err)
			}
			bad = *back
			bad.InitKey = bad.LeafNode.EncryptionKey
			if err := bad.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("init_key == encryption_key: %v", err)
			}
			bad = *back
			bad.Version = 2
			if err := bad.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("version: %v", err)
			}
		})
	}
}

func equalU16(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNewKeyPackageRules(t *testing.T) {
	s := mustSuite(t, 1)
	p, signer, _, _ := testParams(t, s)
	cases := map[string]func(p *KeyPackageParams){
		"default proposal":       func(p *KeyPackageParams) { p.Capabilities.Proposals = []uint16{3} },
		"default extension":      func(p *KeyPackageParams) { p.Capabilities.Extensions = []uint16{2} },
		"same keys":              func(p *KeyPackageParams) { p.EncryptionKey = p.InitKey },
		"bad init key":           func(p *KeyPackageParams) { p.InitKey = p.InitKey[1:] },
		"bad signature key":      func(p *KeyPackageParams) { p.SignatureKey = nil },
		"lifetime":               func(p *KeyPackageParams) { p.Lifetime.NotAfter = p.Lifetime.NotBefore },
		"duplicate extension":    func(p *KeyPackageParams) { p.Extensions = []Extension{{Type: 9}, {Type: 9}} },
		"unknown credential":     func(p *KeyPackageParams) { p.Credential.Type = 7 },
		"x509 without certs":     func(p *KeyPackageParams) { p.Credential = Credential{Type: CredentialTypeX509} },
		"unknown suite":          func(p *KeyPackageParams) { p.Suite = 99 },
		"signer of another key":  func(p *KeyPackageParams) { _, p.SignatureKey = newSigner(t, s) },
		"last resort duplicated": func(p *KeyPackageParams) { p.Extensions = []Extension{{Type: 10}, {Type: 10}} },
	}
	for name, mod := range cases {
		q := p
		mod(&q)
		if _, err := NewKeyPackage(q, signer); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// An explicit last_resort extension is not added twice.
	q := p
	q.LastResort = true
	q.Extensions = []Extension{{Type: ExtensionLastResort, Data: []byte{}}}
	kp, err := NewKeyPackage(q, signer)
	if err != nil || len(kp.Extensions) != 1 {
		t.Errorf("explicit last_resort: %v", err)
	}
	if _, err := NewKeyPackage(p, nil); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("nil signer: %v", err)
	}
}

func TestX509Credential(t *testing.T) {
	for _, id := range []CipherSuite{1, 2, 5, 7} {
		s := mustSuite(t, id)
		p, signer, _, _ := testParams(t, s)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "alice"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
		if err != nil {
			t.Fatal(err)
		}
		p.Credential = Credential{Type: CredentialTypeX509, Certificates: [][]byte{der}}
		kp, err := NewKeyPackage(p, signer)
		if err != nil {
			t.Fatalf("%v: %v", s.Name, err)
		}
		back, err := UnmarshalKeyPackage(kp.Marshal())
		if err != nil || back.Verify(time.Now()) != nil || !bytes.Equal(back.Marshal(), kp.Marshal()) {
			t.Errorf("%v: x509 KeyPackage round trip: %v", s.Name, err)
		}
		// The certificate of another key must not vouch for this one.
		other, _ := newSigner(t, s)
		der2, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, other.Public(), other)
		back.LeafNode.Credential.Certificates = [][]byte{der2}
		if err := back.Verify(time.Time{}); !errors.Is(err, ErrInvalidKeyPackage) {
			t.Errorf("%v: foreign certificate: %v", s.Name, err)
		}
	}
}

func TestMalformedKeyPackage(t *testing.T) {
	s := mustSuite(t, 2)
	p, signer, _, _ := testParams(t, s)
	p.LastResort = true
	kp, err := NewKeyPackage(p, signer)
	if err != nil {
		t.Fatal(err)
	}
	enc := kp.Marshal()
	for i := 0; i < len(enc); i++ {
		if _, err := UnmarshalKeyPackage(enc[:i]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("truncation to %d: %v", i, err)
		}
	}
	if _, err := UnmarshalKeyPackage(append(append([]byte{}, enc...), 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("trailing byte: %v", err)
	}
	// init_key's length 65 is a 2-byte varint 0x4041; a 4-byte one is
	// non-minimal.
	if enc[4] != 0x40 || enc[5] != 65 {
		t.Fatalf("unexpected init_key header %x", enc[4:6])
	}
	nonMin := append(append([]byte{}, enc[:4]...), 0x80, 0, 0, 65)
	nonMin = append(nonMin, enc[6:]...)
	if _, err := UnmarshalKeyPackage(nonMin); !errors.Is(err, ErrMalformed) {
		t.Errorf("non-minimal varint: %v", err)
	}
	// A 1-byte length written in two bytes.
	if _, err := UnmarshalGroupSecrets(mustHex(t, "400100 00 00")); !errors.Is(err, ErrMalformed) {
		t.Errorf("non-minimal 2-byte varint: %v", err)
	}
	if _, err := UnmarshalGroupSecrets(mustHex(t, "0100 02 00")); !errors.Is(err, ErrMalformed) {
		t.Errorf("optional byte 2: %v", err)
	}
	if gs, err := UnmarshalGroupSecrets(mustHex(t, "0100 01 00 00")); err != nil || gs.PathSecret == nil || len(gs.PathSecret) != 0 {
		t.Errorf("present empty path_secret: %+v %v", gs, err)
	}
	if gs, err := UnmarshalGroupSecrets(mustHex(t, "0100 00 00")); err != nil || gs.PathSecret != nil {
		t.Errorf("absent path_secret: %+v %v", gs, err)
	}
	// PSK type 3 does not exist.
	if _, err := UnmarshalGroupSecrets(mustHex(t, "0100 00 02 0300")); !errors.Is(err, ErrMalformed) {
		t.Errorf("psktype 3: %v", err)
	}
	if _, err := UnmarshalMLSMessage(mustHex(t, "00010001")); !errors.Is(err, ErrUnsupportedWireFormat) {
		t.Errorf("PublicMessage: %v", err)
	}
	if _, err := UnmarshalMLSMessage(mustHex(t, "00010002")); !errors.Is(err, ErrUnsupportedWireFormat) {
		t.Errorf("PrivateMessage: %v", err)
	}
	if _, err := UnmarshalMLSMessage(mustHex(t, "00020005")); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("version 2: %v", err)
	}
	if _, err := UnmarshalMLSMessage(append([]byte{0, 1, 0, 5}, enc[:len(enc)-1]...)); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated message: %v", err)
	}
	// Leaf source 4 does not exist; a commit leaf carries parent_hash.
	ln := kp.LeafNode
	ln.Source = 4
	if _, err := UnmarshalLeafNode(ln.Marshal()); !errors.Is(err, ErrMalformed) {
		t.Errorf("leaf source 4: %v", err)
	}
	ln = kp.LeafNode
	ln.Source = LeafNodeSourceCommit
	ln.ParentHash = []byte{1, 2, 3}
	ln.Lifetime = nil
	if back, err := UnmarshalLeafNode(ln.Marshal()); err != nil || !bytes.Equal(back.ParentHash, ln.ParentHash) || back.Lifetime != nil {
		t.Errorf("commit leaf round trip: %v", err)
	}
}
