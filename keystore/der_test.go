package keystore

import (
	"bytes"
	"encoding/asn1"
	"math/big"
	"math/rand/v2"
	"testing"
)

// rawToDER writes what encoding/asn1 writes for the same (r, s), for every
// curve size and the values that need care: leading zero bytes, a high
// bit that needs a zero byte in front, one-byte components, and a P-521
// signature whose SEQUENCE needs a long-form length.
func TestRawToDERMatchesASN1(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{32, 48, 66} {
		var cases [][]byte
		for range 300 {
			raw := make([]byte, 2*n)
			for i := range raw {
				raw[i] = byte(rng.Uint32())
			}
			switch rng.IntN(5) {
			case 0: // leading zero bytes in r
				clear(raw[:rng.IntN(n-1)+1])
				raw[n-1] |= 1
			case 1: // high bit of s
				raw[n] |= 0x80
			case 2: // r = 1 and s all ones
				clear(raw[:n])
				raw[n-1] = 1
				for i := n; i < 2*n; i++ {
					raw[i] = 0xff
				}
			}
			cases = append(cases, raw)
		}
		for _, raw := range cases {
			want, err := asn1.Marshal(ecdsaSig{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
			if err != nil {
				t.Fatal(err)
			}
			got, err := rawToDER(raw, n)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("n=%d raw %x: %v\n got %x\nwant %x", n, raw, err, got, want)
			}
			back, err := derToRaw(got, n)
			if err != nil || !bytes.Equal(back, raw) {
				t.Fatalf("n=%d: round trip %x, %v", n, back, err)
			}
		}
		zero := make([]byte, 2*n)
		zero[0] = 1 // s = 0
		if _, err := rawToDER(zero, n); err == nil {
			t.Fatalf("n=%d: zero s accepted", n)
		}
		if _, err := rawToDER(zero[:2*n-1], n); err == nil {
			t.Fatalf("n=%d: short signature accepted", n)
		}
	}
}
