package mls

import (
	"bytes"
	"encoding/hex"
)

// Montgomery-curve points whose Diffie-Hellman output is all zeros for
// every private key: the points of small order and their non-canonical
// encodings. A kem_output equal to one of them would make the receiver's
// shared secret a constant, so it is refused before any private key is used
// (RFC 7748 §6; RFC 9180 §7.1.4 makes the all-zero check mandatory).

// x25519LowOrder lists the u-coordinates below 2^255 that are small-order
// points of Curve25519 or reduce to one: 0, 1, the two points of order 8,
// p-1, p and p+1. X25519 ignores the top bit, so it is cleared before the
// comparison.
var x25519LowOrder = hexList(
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0100000000000000000000000000000000000000000000000000000000000000",
	"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
	"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
)

// x448LowOrder: 0, 1, p-1, and the non-canonical p and p+1.
var x448LowOrder = hexList(
	"0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
	"0100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
	"fefffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffffffffffffffffffffffffffffffffffffffffffffffffff",
	"fffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffffffffffffffffffffffffffffffffffffffffffffffffff",
	"00000000000000000000000000000000000000000000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
)

func hexList(hs ...string) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		b, err := hex.DecodeString(h)
		if err != nil {
			panic(err)
		}
		out[i] = b
	}
	return out
}

// isLowOrder reports whether u is a low-order point of X25519 (32 bytes) or
// X448 (56 bytes).
func isLowOrder(u []byte) bool {
	list := x448LowOrder
	if len(u) == 32 {
		list = x25519LowOrder
		masked := bytes.Clone(u)
		masked[31] &= 0x7f
		u = masked
	}
	for _, p := range list {
		if bytes.Equal(u, p) {
			return true
		}
	}
	return false
}
