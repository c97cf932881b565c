// Package mls implements the parts of MLS (RFC 9420) that a key-holding
// daemon needs: the TLS presentation-language codec, cipher suites,
// labelled signing and HPKE encryption, KeyPackages, Welcome, GroupSecrets
// and GroupInfo.
//
// The package never sees private key bytes. Signatures go through a
// crypto.Signer and HPKE decryption through an ecdh.KeyExchanger (or an
// X448KeyExchanger for the X448 suites), so the keys can live in an HSM or
// TPM while the HPKE key schedule and AEAD run here in Go.
//
// Decoders accept untrusted input: every length is bounded by the input,
// non-minimal varints and trailing bytes are rejected, and every decode error
// wraps ErrMalformed. Decoded structures re-encode byte-exactly, because the
// hashes and signatures MLS uses are computed over the exact encoding.
package mls
