package mls

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/hex"
	"errors"
	"testing"
)

type cryptoBasics struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
	RefHash     struct {
		Label string   `json:"label"`
		Value hexBytes `json:"value"`
		Out   hexBytes `json:"out"`
	} `json:"ref_hash"`
	ExpandWithLabel struct {
		Secret  hexBytes `json:"secret"`
		Label   string   `json:"label"`
		Context hexBytes `json:"context"`
		Length  int      `json:"length"`
		Out     hexBytes `json:"out"`
	} `json:"expand_with_label"`
	DeriveSecret struct {
		Secret hexBytes `json:"secret"`
		Label  string   `json:"label"`
		Out    hexBytes `json:"out"`
	} `json:"derive_secret"`
	DeriveTreeSecret struct {
		Secret     hexBytes `json:"secret"`
		Label      string   `json:"label"`
		Generation uint32   `json:"generation"`
		Length     int      `json:"length"`
		Out        hexBytes `json:"out"`
	} `json:"derive_tree_secret"`
	SignWithLabel struct {
		Priv      hexBytes `json:"priv"`
		Pub       hexBytes `json:"pub"`
		Content   hexBytes `json:"content"`
		Label     string   `json:"label"`
		Signature hexBytes `json:"signature"`
	} `json:"sign_with_label"`
	EncryptWithLabel struct {
		Priv       hexBytes `json:"priv"`
		Pub        hexBytes `json:"pub"`
		Label      string   `json:"label"`
		Context    hexBytes `json:"context"`
		Plaintext  hexBytes `json:"plaintext"`
		KEMOutput  hexBytes `json:"kem_output"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"encrypt_with_label"`
}

func TestCryptoBasics(t *testing.T) {
	var vs []cryptoBasics
	loadJSON(t, "crypto-basics.json", &vs)
	if len(vs) != 7 {
		t.Fatalf("got %d entries, want 7", len(vs))
	}
	for _, v := range vs {
		s := mustSuite(t, v.CipherSuite)
		t.Run(s.Name, func(t *testing.T) {
			if got := s.RefHash(v.RefHash.Label, v.RefHash.Value); !bytes.Equal(got, v.RefHash.Out) {
				t.Errorf("RefHash = %x, want %x", got, v.RefHash.Out)
			}
			e := v.ExpandWithLabel
			if got, err := s.ExpandWithLabel(e.Secret, e.Label, e.Context, e.Length); err != nil || !bytes.Equal(got, e.Out) {
				t.Errorf("ExpandWithLabel = %x, %v; want %x", got, err, e.Out)
			}
			d := v.DeriveSecret
			if got, err := s.DeriveSecret(d.Secret, d.Label); err != nil || !bytes.Equal(got, d.Out) {
				t.Errorf("DeriveSecret = %x, %v; want %x", got, err, d.Out)
			}
			dt := v.DeriveTreeSecret
			if got, err := s.DeriveTreeSecret(dt.Secret, dt.Label, dt.Generation, dt.Length); err != nil || !bytes.Equal(got, dt.Out) {
				t.Errorf("DeriveTreeSecret = %x, %v; want %x", got, err, dt.Out)
			}

			sv := v.SignWithLabel
			if err := s.VerifyWithLabel(sv.Pub, sv.Label, sv.Content, sv.Signature); err != nil {
				t.Errorf("VerifyWithLabel(vector): %v", err)
			}
			if err := s.VerifyWithLabel(sv.Pub, sv.Label+"x", sv.Content, sv.Signature); !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("VerifyWithLabel(wrong label) = %v, want ErrInvalidSignature", err)
			}
			signer := &opaqueSigner{inner: signerFromPriv(t, s, sv.Priv)}
			sig, err := s.SignWithLabel(signer, sv.Label, sv.Content)
			if err != nil {
				t.Fatalf("SignWithLabel: %v", err)
			}
			if err := s.VerifyWithLabel(sv.Pub, sv.Label, sv.Content, sig); err != nil {
				t.Errorf("VerifyWithLabel(own signature): %v", err)
			}
			if signer.calls.Load() != 1 {
				t.Errorf("signer called %d times", signer.calls.Load())
			}
			if s.SignatureScheme == SchemeEd25519 || s.SignatureScheme == SchemeEd448 {
				// EdDSA is deterministic: the signature must match byte for byte.
				if !bytes.Equal(sig, sv.Signature) {
					t.Errorf("EdDSA signature differs from vector")
				}
			}

			ev := v.EncryptWithLabel
			priv, cnt := hpkeKey(t, s, ev.Priv)
			pt, err := s.DecryptWithLabel(priv, ev.Label, ev.Context, ev.KEMOutput, ev.Ciphertext)
			if err != nil || !bytes.Equal(pt, ev.Plaintext) {
				t.Fatalf("DecryptWithLabel(vector) = %x, %v", pt, err)
			}
			if cnt.count() != 1 {
				t.Errorf("key exchanger called %d times, want 1", cnt.count())
			}
			kem, ct, err := s.EncryptWithLabel(ev.Pub, ev.Label, ev.Context, ev.Plaintext)
			if err != nil {
				t.Fatalf("EncryptWithLabel: %v", err)
			}
			if len(kem) != s.KEMOutputSize() {
				t.Errorf("kem_output of %d bytes", len(kem))
			}
			if pt, err := s.DecryptWithLabel(priv, ev.Label, ev.Context, kem, ct); err != nil || !bytes.Equal(pt, ev.Plaintext) {
				t.Errorf("round trip = %x, %v", pt, err)
			}
			if _, err := s.DecryptWithLabel(priv, ev.Label, append(ev.Context, 0), kem, ct); !errors.Is(err, ErrDecryption) {
				t.Errorf("wrong context: %v, want ErrDecryption", err)
			}
			if _, err := s.DecryptWithLabel(priv, ev.Label, ev.Context, kem[1:], ct); !errors.Is(err, ErrDecryption) {
				t.Errorf("short kem_output: %v, want ErrDecryption", err)
			}
		})
	}
}

func TestWrongKeyType(t *testing.T) {
	s1 := mustSuite(t, 1)
	s2 := mustSuite(t, 2)
	s4 := mustSuite(t, 4)
	k2, _ := newHPKEKey(t, s2)
	k4, _ := newHPKEKey(t, s4)
	kem := make([]byte, 32)
	if _, err := s1.DecryptWithLabel(k2, "Welcome", nil, kem, make([]byte, 32)); !errors.Is(err, ErrInvalidPrivateKey) {
		t.Errorf("P-256 key for X25519 suite: %v", err)
	}
	if _, err := s1.DecryptWithLabel(k4, "Welcome", nil, kem, make([]byte, 32)); !errors.Is(err, ErrInvalidPrivateKey) {
		t.Errorf("X448 key for X25519 suite: %v", err)
	}
	if _, err := s4.DecryptWithLabel(k2, "Welcome", nil, make([]byte, 56), make([]byte, 32)); !errors.Is(err, ErrInvalidPrivateKey) {
		t.Errorf("P-256 key for X448 suite: %v", err)
	}
	// A zero X448 peer point is low order and must be refused.
	if _, err := s4.DecryptWithLabel(k4, "Welcome", nil, make([]byte, 56), make([]byte, 32)); !errors.Is(err, ErrDecryption) {
		t.Errorf("low-order X448 point: %v", err)
	}
}

func TestSuites(t *testing.T) {
	if len(Suites()) != 7 {
		t.Fatal("want 7 suites")
	}
	for _, s := range Suites() {
		for _, in := range []string{s.Name, stringsToLower(s.Name), hex.EncodeToString([]byte{0, byte(s.ID)}), "0x" + hex.EncodeToString([]byte{byte(s.ID)}), string(rune('0' + s.ID))} {
			if id, err := ParseSuite(in); err != nil || id != s.ID {
				t.Errorf("ParseSuite(%q) = %v, %v", in, id, err)
			}
		}
		if s.Hash.Size() != s.HashSize() || !s.Hash.Available() {
			t.Errorf("%s hash unavailable", s.Name)
		}
	}
	for _, bad := range []string{"", "0", "8", "0x10000", "MLS_FOO", "-1", "0x"} {
		if _, err := ParseSuite(bad); !errors.Is(err, ErrUnknownSuite) {
			t.Errorf("ParseSuite(%q) = %v, want ErrUnknownSuite", bad, err)
		}
	}
	if _, err := LookupSuite(0); !errors.Is(err, ErrUnknownSuite) {
		t.Error("LookupSuite(0) succeeded")
	}
	if _, err := LookupSuite(0x0a0a); !errors.Is(err, ErrUnknownSuite) {
		t.Error("LookupSuite(GREASE) succeeded")
	}
}

func stringsToLower(s string) string { return string(bytes.ToLower([]byte(s))) }

func TestValidatePublicKeys(t *testing.T) {
	for _, s := range Suites() {
		_, pub := newHPKEKey(t, s)
		if err := s.ValidateHPKEPublicKey(pub); err != nil {
			t.Errorf("%s: valid HPKE key rejected: %v", s.Name, err)
		}
		if err := s.ValidateHPKEPublicKey(pub[1:]); !errors.Is(err, ErrInvalidPublicKey) {
			t.Errorf("%s: short HPKE key: %v", s.Name, err)
		}
		_, spub := newSigner(t, s)
		if err := s.ValidateSignaturePublicKey(spub); err != nil {
			t.Errorf("%s: valid signature key rejected: %v", s.Name, err)
		}
		if err := s.ValidateSignaturePublicKey(append(spub, 0)); !errors.Is(err, ErrInvalidPublicKey) {
			t.Errorf("%s: long signature key: %v", s.Name, err)
		}
		if s.kemCurve() != nil && s.KEM != KEMX25519 {
			off := append([]byte{}, pub...)
			off[len(off)-1] ^= 1 // almost certainly no longer on the curve
			if err := s.ValidateHPKEPublicKey(off); !errors.Is(err, ErrInvalidPublicKey) {
				t.Errorf("%s: off-curve key: %v", s.Name, err)
			}
		}
	}
}

// TestRFC9180CrossCheck runs the hand-written base-mode HPKE used for X448
// with X25519 against crypto/hpke, covering its key schedule and the
// ChaCha20-Poly1305 and AES-GCM AEADs independently of the X448 vectors.
func TestRFC9180CrossCheck(t *testing.T) {
	for _, id := range []CipherSuite{1, 3} {
		s := mustSuite(t, id)
		k, err := ecdh.X25519().GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		info := EncryptContext("Welcome", []byte("ctx"))
		kem, ct, err := s.EncryptWithLabel(k.PublicKey().Bytes(), "Welcome", []byte("ctx"), []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		eph, err := ecdh.X25519().NewPublicKey(kem)
		if err != nil {
			t.Fatal(err)
		}
		dh, err := k.ECDH(eph)
		if err != nil {
			t.Fatal(err)
		}
		c := rfc9180{kemID: KEMX25519, kdfID: s.KDF, aeadID: s.AEAD, kemHash: crypto.SHA256, kdfHash: s.Hash, nSecret: 32, nk: s.AEADKeySize(), nn: 12}
		pt, err := c.open(dh, kem, k.PublicKey().Bytes(), info, ct)
		if err != nil || string(pt) != "hello" {
			t.Fatalf("suite %d: open = %q, %v", id, pt, err)
		}
		// And the other direction: seal here, open with crypto/hpke.
		ct2, err := c.seal(dh, kem, k.PublicKey().Bytes(), info, []byte("world"))
		if err != nil {
			t.Fatal(err)
		}
		kdf, aead, _ := s.hpkeAlgs()
		hk, _ := hpke.NewDHKEMPrivateKey(k)
		pt, err = hpke.Open(hk, kdf, aead, info, append(append([]byte{}, kem...), ct2...))
		if err != nil || string(pt) != "world" {
			t.Fatalf("suite %d: crypto/hpke open = %q, %v", id, pt, err)
		}
	}
}

// TestChaCha20Poly1305RFC8439 checks suites 3 and 6's AEAD (from
// golang.org/x/crypto) as this package wires it, against RFC 8439 §2.8.2.
func TestChaCha20Poly1305RFC8439(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = 0x80 + byte(i)
	}
	nonce, _ := hex.DecodeString("070000004041424344454647")
	aad, _ := hex.DecodeString("50515253c0c1c2c3c4c5c6c7")
	pt := []byte("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.")
	a, err := newAEAD(AEADChaCha20Poly1305, key)
	if err != nil {
		t.Fatal(err)
	}
	out := a.Seal(nil, nonce, pt, aad)
	if got := hex.EncodeToString(out[len(out)-16:]); got != "1ae10b594f09e26a7e902ecbd0600691" {
		t.Errorf("tag = %s", got)
	}
	if got := hex.EncodeToString(out[:16]); got != "d31a8d34648e60db7b86afbc53ef7ec2" {
		t.Errorf("ciphertext starts %s", got)
	}
	back, err := a.Open(nil, nonce, out, aad)
	if err != nil || !bytes.Equal(back, pt) {
		t.Fatalf("Open = %q, %v", back, err)
	}
	out[3] ^= 1
	if _, err := a.Open(nil, nonce, out, aad); err == nil {
		t.Error("tampered ciphertext accepted")
	}
	if _, err := a.Open(nil, nonce, out[:15], aad); err == nil {
		t.Error("short ciphertext accepted")
	}
}
