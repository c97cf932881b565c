package mls

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/dh/x448"
)

// Every listed point must really give an all-zero shared secret with an
// independent implementation, and random valid keys must pass.
func TestLowOrderPointsGiveZeroSecrets(t *testing.T) {
	k, _ := ecdh.X25519().GenerateKey(rand.Reader)
	for _, u := range x25519LowOrder {
		for _, top := range []byte{0, 0x80} {
			v := bytes.Clone(u)
			v[31] |= top
			p, err := ecdh.X25519().NewPublicKey(v)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := k.ECDH(p); err == nil {
				t.Errorf("%x: crypto/ecdh computes a non-zero secret", v)
			}
			if !isLowOrder(v) {
				t.Errorf("%x not flagged", v)
			}
		}
	}
	var s, out x448.Key
	rand.Read(s[:])
	for _, u := range x448LowOrder {
		var p x448.Key
		copy(p[:], u)
		if x448.Shared(&out, &s, &p) {
			t.Errorf("%x: circl computes a non-zero secret", u)
		}
	}
	for range 100 {
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		if isLowOrder(k.PublicKey().Bytes()) {
			t.Fatal("random X25519 key flagged")
		}
		var s, p x448.Key
		rand.Read(s[:])
		x448.KeyGen(&p, &s)
		if isLowOrder(p[:]) {
			t.Fatal("random X448 key flagged")
		}
	}
	for _, id := range []CipherSuite{1, 4} {
		su, _ := LookupSuite(id)
		n := 32
		if id == 4 {
			n = 56
		}
		if err := su.ValidateHPKEPublicKey(make([]byte, n)); err == nil {
			t.Errorf("suite %d accepts the zero point", id)
		}
	}
}
