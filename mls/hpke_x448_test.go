package mls

import (
	"bytes"
	"crypto"
	"testing"
)

// TestX448AgainstRFC9180Vectors checks the package's own DHKEM(X448,
// HKDF-SHA512) — kept because no library accepts an X448 key that stays in
// a device — and its base-mode key schedule against RFC 9180's vectors.
func TestX448AgainstRFC9180Vectors(t *testing.T) {
	var vs []struct {
		KemID                             uint16 `json:"kem_id"`
		KdfID                             uint16 `json:"kdf_id"`
		AeadID                            uint16 `json:"aead_id"`
		Info, SkRm, PkRm, SkEm, PkEm, Enc hexBytes
		SharedSecret                      hexBytes `json:"shared_secret"`
		K                                 hexBytes `json:"key"`
		N                                 hexBytes `json:"base_nonce"`
		AAD, CT, PT, Nonce                hexBytes
	}
	loadJSON(t, "rfc9180-x448.json", &vs)
	if len(vs) != 6 {
		t.Fatalf("%d vectors", len(vs))
	}
	for _, v := range vs {
		if v.KemID != KEMX448 {
			t.Fatalf("kem %#x", v.KemID)
		}
		skR, err := NewX448PrivateKey(v.SkRm)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(skR.X448PublicKey(), v.PkRm) {
			t.Fatalf("kdf %d aead %d: pkR differs", v.KdfID, v.AeadID)
		}
		skE, _ := NewX448PrivateKey(v.SkEm)
		if !bytes.Equal(skE.X448PublicKey(), v.Enc) {
			t.Fatalf("kdf %d aead %d: enc differs", v.KdfID, v.AeadID)
		}
		// Receiver side, as in openX448: DH with the device's key, then
		// the KEM's ExtractAndExpand and the key schedule.
		dh, err := skR.X448(v.Enc)
		if err != nil {
			t.Fatal(err)
		}
		c := rfc9180{kemID: KEMX448, kdfID: v.KdfID, aeadID: v.AeadID, kemHash: crypto.SHA512,
			kdfHash: map[uint16]crypto.Hash{KDFHKDFSHA256: crypto.SHA256, KDFHKDFSHA512: crypto.SHA512}[v.KdfID],
			nSecret: 64, nk: len(v.K), nn: len(v.N)}
		shared, err := c.kemSharedSecret(dh, v.Enc, v.PkRm)
		if err != nil || !bytes.Equal(shared, v.SharedSecret) {
			t.Fatalf("kdf %d aead %d: shared secret %x, want %x (%v)", v.KdfID, v.AeadID, shared, v.SharedSecret, err)
		}
		key, nonce, err := c.baseKeyNonce(shared, v.Info)
		if err != nil || !bytes.Equal(key, v.K) || !bytes.Equal(nonce, v.N) || !bytes.Equal(nonce, v.Nonce) {
			t.Fatalf("kdf %d aead %d: key schedule differs (%v)", v.KdfID, v.AeadID, err)
		}
		aead, err := newAEAD(v.AeadID, key)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := aead.Open(nil, nonce, v.CT, v.AAD)
		if err != nil || !bytes.Equal(pt, v.PT) {
			t.Fatalf("kdf %d aead %d: open: %v", v.KdfID, v.AeadID, err)
		}
		// The sender side with the vector's ephemeral key: same ciphertext.
		eph, err := skE.X448(v.PkRm)
		if err != nil || !bytes.Equal(eph, dh) {
			t.Fatalf("kdf %d aead %d: sender DH differs", v.KdfID, v.AeadID)
		}
	}
}

// keepingX448 remembers the shared secrets it hands out.
type keepingX448 struct {
	k    *X448PrivateKey
	gave [][]byte
}

func (o *keepingX448) X448PublicKey() []byte { return o.k.X448PublicKey() }
func (o *keepingX448) X448(peer []byte) ([]byte, error) {
	z, err := o.k.X448(peer)
	o.gave = append(o.gave, z)
	return z, err
}

// The X448 shared secret is wiped once the HPKE context is derived.
func TestX448SharedSecretWiped(t *testing.T) {
	s := mustSuite(t, 6)
	k, err := GenerateX448Key()
	if err != nil {
		t.Fatal(err)
	}
	kem, ct, err := s.EncryptWithLabel(k.X448PublicKey(), LabelWelcome, []byte("c"), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	o := &keepingX448{k: k}
	if pt, err := s.DecryptWithLabel(o, LabelWelcome, []byte("c"), kem, ct); err != nil || string(pt) != "secret" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	if len(o.gave) != 1 || !isZero(o.gave[0]) {
		t.Fatalf("shared secret not wiped: %x", o.gave)
	}
}
