package mls

// crypto/hpke has no DHKEM(X448, HKDF-SHA512), so suites 4 and 6 get a
// small RFC 9180 base-mode implementation here. The receiver side only
// calls X448KeyExchanger.X448, so the private key can stay in a device;
// the sender's ephemeral key and the software key type use circl.

import (
	"crypto"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/dh/x448"
)

const x448KeySize = x448.Size

// X448KeyExchanger is an opaque X448 private key, the X448 counterpart of
// ecdh.KeyExchanger.
type X448KeyExchanger interface {
	// X448PublicKey returns the 56-byte public key.
	X448PublicKey() []byte
	// X448 returns the raw 56-byte shared secret with peer's public key.
	X448(peer []byte) ([]byte, error)
}

// X448PrivateKey is a software X448KeyExchanger.
type X448PrivateKey struct {
	priv, pub x448.Key
}

// NewX448PrivateKey imports a 56-byte X448 private key (RFC 9180
// SerializePrivateKey form).
func NewX448PrivateKey(b []byte) (*X448PrivateKey, error) {
	if len(b) != x448KeySize {
		return nil, fmt.Errorf("%w: X448 private key of %d bytes", ErrInvalidParams, len(b))
	}
	k := &X448PrivateKey{}
	copy(k.priv[:], b)
	x448.KeyGen(&k.pub, &k.priv)
	return k, nil
}

// GenerateX448Key returns a fresh software X448 key.
func GenerateX448Key() (*X448PrivateKey, error) {
	var b [x448KeySize]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return NewX448PrivateKey(b[:])
}

// Bytes returns the private key.
func (k *X448PrivateKey) Bytes() []byte { return append([]byte{}, k.priv[:]...) }

// X448PublicKey implements X448KeyExchanger.
func (k *X448PrivateKey) X448PublicKey() []byte { return append([]byte{}, k.pub[:]...) }

var errX448LowOrder = errors.New("mls: X448 shared secret is zero (low-order point)")

// X448 implements X448KeyExchanger.
func (k *X448PrivateKey) X448(peer []byte) ([]byte, error) {
	if len(peer) != x448KeySize {
		return nil, fmt.Errorf("%w: X448 peer key of %d bytes", ErrInvalidPublicKey, len(peer))
	}
	var p, shared x448.Key
	copy(p[:], peer)
	if !x448.Shared(&shared, &k.priv, &p) {
		return nil, errX448LowOrder
	}
	return shared[:], nil
}

// rfc9180 holds what the base-mode HPKE key schedule needs; it is written
// independently of X448 so tests can cross-check it against crypto/hpke.
type rfc9180 struct {
	kemID, kdfID, aeadID uint16
	kemHash, kdfHash     crypto.Hash
	nSecret, nk, nn      int
}

func x448HPKE(s *Suite) rfc9180 {
	return rfc9180{
		kemID: KEMX448, kdfID: s.KDF, aeadID: s.AEAD,
		kemHash: crypto.SHA512, kdfHash: s.Hash,
		nSecret: 64, nk: s.AEADKeySize(), nn: s.AEADNonceSize(),
	}
}

func labeledExtract(h crypto.Hash, suiteID, salt []byte, label string, ikm []byte) ([]byte, error) {
	in := make([]byte, 0, 7+len(suiteID)+len(label)+len(ikm))
	in = append(in, "HPKE-v1"...)
	in = append(in, suiteID...)
	in = append(in, label...)
	in = append(in, ikm...)
	return hkdf.Extract(h.New, in, salt)
}

func labeledExpand(h crypto.Hash, suiteID, prk []byte, label string, info []byte, length int) ([]byte, error) {
	in := binary.BigEndian.AppendUint16(nil, uint16(length))
	in = append(in, "HPKE-v1"...)
	in = append(in, suiteID...)
	in = append(in, label...)
	in = append(in, info...)
	return hkdf.Expand(h.New, prk, string(in), length)
}

// kemSharedSecret is DHKEM's ExtractAndExpand (RFC 9180 §4.1).
func (c rfc9180) kemSharedSecret(dh, enc, pkR []byte) ([]byte, error) {
	suiteID := binary.BigEndian.AppendUint16([]byte("KEM"), c.kemID)
	prk, err := labeledExtract(c.kemHash, suiteID, nil, "eae_prk", dh)
	if err != nil {
		return nil, err
	}
	defer clear(prk)
	kemContext := append(append([]byte{}, enc...), pkR...)
	return labeledExpand(c.kemHash, suiteID, prk, "shared_secret", kemContext, c.nSecret)
}

// baseKeyNonce is KeySchedule for mode_base with no PSK (RFC 9180 §5.1),
// returning the key and base nonce; sequence number 0 is the only one MLS
// uses, so the nonce is used as is.
func (c rfc9180) baseKeyNonce(shared, info []byte) (key, nonce []byte, err error) {
	suiteID := []byte("HPKE")
	suiteID = binary.BigEndian.AppendUint16(suiteID, c.kemID)
	suiteID = binary.BigEndian.AppendUint16(suiteID, c.kdfID)
	suiteID = binary.BigEndian.AppendUint16(suiteID, c.aeadID)
	pskIDHash, err := labeledExtract(c.kdfHash, suiteID, nil, "psk_id_hash", nil)
	if err != nil {
		return nil, nil, err
	}
	infoHash, err := labeledExtract(c.kdfHash, suiteID, nil, "info_hash", info)
	if err != nil {
		return nil, nil, err
	}
	ksc := append(append([]byte{0x00}, pskIDHash...), infoHash...)
	secret, err := labeledExtract(c.kdfHash, suiteID, shared, "secret", nil)
	if err != nil {
		return nil, nil, err
	}
	defer clear(secret)
	if key, err = labeledExpand(c.kdfHash, suiteID, secret, "key", ksc, c.nk); err != nil {
		return nil, nil, err
	}
	if nonce, err = labeledExpand(c.kdfHash, suiteID, secret, "base_nonce", ksc, c.nn); err != nil {
		return nil, nil, err
	}
	return key, nonce, nil
}

func (c rfc9180) open(dh, enc, pkR, info, ciphertext []byte) ([]byte, error) {
	shared, err := c.kemSharedSecret(dh, enc, pkR)
	if err != nil {
		return nil, err
	}
	defer clear(shared)
	key, nonce, err := c.baseKeyNonce(shared, info)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	aead, err := newAEAD(c.aeadID, key)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, nonce, ciphertext, nil)
}

func (c rfc9180) seal(dh, enc, pkR, info, plaintext []byte) ([]byte, error) {
	shared, err := c.kemSharedSecret(dh, enc, pkR)
	if err != nil {
		return nil, err
	}
	defer clear(shared)
	key, nonce, err := c.baseKeyNonce(shared, info)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	aead, err := newAEAD(c.aeadID, key)
	if err != nil {
		return nil, err
	}
	return aead.Seal(nil, nonce, plaintext, nil), nil
}

func isZero(b []byte) bool {
	return subtle.ConstantTimeCompare(b, make([]byte, len(b))) == 1
}

func sealX448(s *Suite, pkR, info, plaintext []byte) (kemOutput, ciphertext []byte, err error) {
	eph, err := GenerateX448Key()
	if err != nil {
		return nil, nil, err
	}
	defer clear(eph.priv[:])
	dh, err := eph.X448(pkR)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: X448 encapsulation: %w", err)
	}
	defer clear(dh)
	enc := eph.X448PublicKey()
	ct, err := x448HPKE(s).seal(dh, enc, pkR, info, plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: X448 HPKE seal: %w", err)
	}
	return enc, ct, nil
}

func openX448(s *Suite, k X448KeyExchanger, enc, info, ciphertext []byte) ([]byte, error) {
	pkR := k.X448PublicKey()
	if len(pkR) != x448KeySize {
		return nil, fmt.Errorf("%w: X448 public key of %d bytes", ErrInvalidPrivateKey, len(pkR))
	}
	dh, err := k.X448(enc)
	if err != nil {
		return nil, fmt.Errorf("%w: X448: %w", ErrDecryption, err)
	}
	defer clear(dh)
	// RFC 9180 §7.1.4: an all-zero DH output means a low-order peer point;
	// checked here too in case a device does not.
	if len(dh) != x448KeySize || isZero(dh) {
		return nil, fmt.Errorf("%w: X448 produced an invalid shared secret", ErrDecryption)
	}
	pt, err := x448HPKE(s).open(dh, enc, pkR, info, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecryption, err)
	}
	return pt, nil
}
