package mls

// The standard library keeps its ChaCha20-Poly1305 internal and go.mod may
// not grow golang.org/x/crypto, yet the Welcome GroupInfo AEAD and X448 HPKE
// of suites 3 and 6 need it with caller-chosen keys. This is a small RFC 8439
// implementation: 64-bit limb Poly1305 with branch-free final reduction, and
// a constant-time tag comparison.

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

const (
	chachaKeySize   = 32
	chachaNonceSize = 12
	poly1305TagSize = 16
)

type chacha20poly1305 struct {
	key [chachaKeySize]byte
}

func newChaCha20Poly1305(key []byte) (cipher.AEAD, error) {
	if len(key) != chachaKeySize {
		return nil, fmt.Errorf("mls: ChaCha20-Poly1305 key of %d bytes, want 32", len(key))
	}
	c := &chacha20poly1305{}
	copy(c.key[:], key)
	return c, nil
}

func (c *chacha20poly1305) NonceSize() int { return chachaNonceSize }
func (c *chacha20poly1305) Overhead() int  { return poly1305TagSize }

func (c *chacha20poly1305) Seal(dst, nonce, plaintext, aad []byte) []byte {
	if len(nonce) != chachaNonceSize {
		panic("mls: ChaCha20-Poly1305 nonce of wrong size")
	}
	ret, out := sliceForAppend(dst, len(plaintext)+poly1305TagSize)
	ct := out[:len(plaintext)]
	c.xor(ct, plaintext, nonce, 1)
	tag := c.tag(nonce, aad, ct)
	copy(out[len(plaintext):], tag[:])
	return ret
}

var errOpen = errors.New("mls: ChaCha20-Poly1305 message authentication failed")

func (c *chacha20poly1305) Open(dst, nonce, ciphertext, aad []byte) ([]byte, error) {
	if len(nonce) != chachaNonceSize {
		return nil, errOpen
	}
	if len(ciphertext) < poly1305TagSize {
		return nil, errOpen
	}
	ct := ciphertext[:len(ciphertext)-poly1305TagSize]
	tag := c.tag(nonce, aad, ct)
	if subtle.ConstantTimeCompare(tag[:], ciphertext[len(ct):]) != 1 {
		return nil, errOpen
	}
	ret, out := sliceForAppend(dst, len(ct))
	c.xor(out, ct, nonce, 1)
	return ret, nil
}

func sliceForAppend(in []byte, n int) (head, tail []byte) {
	head = append(in, make([]byte, n)...)
	return head, head[len(in):]
}

func (c *chacha20poly1305) tag(nonce, aad, ct []byte) [16]byte {
	var block [64]byte
	chachaBlock(&block, &c.key, nonce, 0)
	p := newPoly1305(block[:32])
	p.padded(aad)
	p.padded(ct)
	var lens [16]byte
	binary.LittleEndian.PutUint64(lens[0:], uint64(len(aad)))
	binary.LittleEndian.PutUint64(lens[8:], uint64(len(ct)))
	p.block(lens[:])
	return p.sum()
}

// xor applies the ChaCha20 key stream starting at block counter ctr.
func (c *chacha20poly1305) xor(dst, src, nonce []byte, ctr uint32) {
	var block [64]byte
	for len(src) > 0 {
		chachaBlock(&block, &c.key, nonce, ctr)
		ctr++
		n := subtle.XORBytes(dst, src, block[:])
		dst, src = dst[n:], src[n:]
	}
}

func quarterRound(a, b, c, d uint32) (uint32, uint32, uint32, uint32) {
	a += b
	d = bits.RotateLeft32(d^a, 16)
	c += d
	b = bits.RotateLeft32(b^c, 12)
	a += b
	d = bits.RotateLeft32(d^a, 8)
	c += d
	b = bits.RotateLeft32(b^c, 7)
	return a, b, c, d
}

func chachaBlock(out *[64]byte, key *[32]byte, nonce []byte, ctr uint32) {
	var s, x [16]uint32
	s[0], s[1], s[2], s[3] = 0x61707865, 0x3320646e, 0x79622d32, 0x6b206574
	for i := 0; i < 8; i++ {
		s[4+i] = binary.LittleEndian.Uint32(key[4*i:])
	}
	s[12] = ctr
	s[13] = binary.LittleEndian.Uint32(nonce[0:])
	s[14] = binary.LittleEndian.Uint32(nonce[4:])
	s[15] = binary.LittleEndian.Uint32(nonce[8:])
	x = s
	for i := 0; i < 10; i++ {
		x[0], x[4], x[8], x[12] = quarterRound(x[0], x[4], x[8], x[12])
		x[1], x[5], x[9], x[13] = quarterRound(x[1], x[5], x[9], x[13])
		x[2], x[6], x[10], x[14] = quarterRound(x[2], x[6], x[10], x[14])
		x[3], x[7], x[11], x[15] = quarterRound(x[3], x[7], x[11], x[15])
		x[0], x[5], x[10], x[15] = quarterRound(x[0], x[5], x[10], x[15])
		x[1], x[6], x[11], x[12] = quarterRound(x[1], x[6], x[11], x[12])
		x[2], x[7], x[8], x[13] = quarterRound(x[2], x[7], x[8], x[13])
		x[3], x[4], x[9], x[14] = quarterRound(x[3], x[4], x[9], x[14])
	}
	for i := range x {
		binary.LittleEndian.PutUint32(out[4*i:], x[i]+s[i])
	}
}

// poly1305 accumulates h (three limbs, h2 small) and multiplies by the
// clamped r modulo 2^130-5. Only whole 16-byte blocks are needed because
// the AEAD construction pads every field to 16 bytes.
type poly1305 struct {
	r0, r1, s0, s1 uint64
	h0, h1, h2     uint64
}

func newPoly1305(key []byte) *poly1305 {
	return &poly1305{
		r0: binary.LittleEndian.Uint64(key[0:]) & 0x0ffffffc0fffffff,
		r1: binary.LittleEndian.Uint64(key[8:]) & 0x0ffffffc0ffffffc,
		s0: binary.LittleEndian.Uint64(key[16:]),
		s1: binary.LittleEndian.Uint64(key[24:]),
	}
}

func (p *poly1305) padded(b []byte) {
	for len(b) >= 16 {
		p.block(b[:16])
		b = b[16:]
	}
	if len(b) > 0 {
		var last [16]byte
		copy(last[:], b)
		p.block(last[:])
	}
}

func (p *poly1305) block(m []byte) {
	var c uint64
	p.h0, c = bits.Add64(p.h0, binary.LittleEndian.Uint64(m[0:]), 0)
	p.h1, c = bits.Add64(p.h1, binary.LittleEndian.Uint64(m[8:]), c)
	p.h2 += c + 1 // the 2^128 bit appended to every full block

	// h * r: r's limbs are below 2^60 after clamping and h2 stays tiny, so
	// the partial products fit the four 64-bit words t0..t3.
	h0r0hi, h0r0lo := bits.Mul64(p.h0, p.r0)
	h0r1hi, h0r1lo := bits.Mul64(p.h0, p.r1)
	h1r0hi, h1r0lo := bits.Mul64(p.h1, p.r0)
	h1r1hi, h1r1lo := bits.Mul64(p.h1, p.r1)
	h2r0 := p.h2 * p.r0
	h2r1 := p.h2 * p.r1

	t0 := h0r0lo
	t1, c := bits.Add64(h0r0hi, h0r1lo, 0)
	t2 := h0r1hi + c
	t1, c = bits.Add64(t1, h1r0lo, 0)
	t2, c = bits.Add64(t2, h1r0hi, c)
	t3 := h1r1hi + c
	t2, c = bits.Add64(t2, h1r1lo, 0)
	t3 += c
	t2, c = bits.Add64(t2, h2r0, 0)
	t3 += c
	t3 += h2r1

	// 2^130 = 5 (mod p): fold the bits above 130 back in as 4*c + c.
	h0, h1, h2 := t0, t1, t2&3
	cc0, cc1 := t2&^3, t3
	h0, c = bits.Add64(h0, cc0, 0)
	h1, c = bits.Add64(h1, cc1, c)
	h2 += c
	cc0 = cc0>>2 | cc1<<62
	cc1 >>= 2
	h0, c = bits.Add64(h0, cc0, 0)
	h1, c = bits.Add64(h1, cc1, c)
	h2 += c
	p.h0, p.h1, p.h2 = h0, h1, h2
}

func (p *poly1305) sum() [16]byte {
	// h < 2p here, so one conditional subtraction of p = 2^130-5 suffices.
	g0, c := bits.Add64(p.h0, 5, 0)
	g1, c := bits.Add64(p.h1, 0, c)
	g2 := p.h2 + c
	mask := -(g2 >> 2)
	h0 := p.h0&^mask | g0&mask
	h1 := p.h1&^mask | g1&mask
	h0, c = bits.Add64(h0, p.s0, 0)
	h1, _ = bits.Add64(h1, p.s1, c)
	var out [16]byte
	binary.LittleEndian.PutUint64(out[0:], h0)
	binary.LittleEndian.PutUint64(out[8:], h1)
	return out
}
