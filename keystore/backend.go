package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Algorithm names a private-key algorithm a device may hold. The set is the
// union of what RFC 9420's cipher suites need for signatures and for DHKEM.
type Algorithm string

const (
	Ed25519   Algorithm = "ed25519"
	Ed448     Algorithm = "ed448"
	ECDSAP256 Algorithm = "ecdsa-p256"
	ECDSAP384 Algorithm = "ecdsa-p384"
	ECDSAP521 Algorithm = "ecdsa-p521"
	X25519    Algorithm = "x25519"
	X448      Algorithm = "x448"
	ECDHP256  Algorithm = "ecdh-p256"
	ECDHP384  Algorithm = "ecdh-p384"
	ECDHP521  Algorithm = "ecdh-p521"
)

// Algorithms lists every Algorithm in a stable order.
var Algorithms = []Algorithm{Ed25519, Ed448, ECDSAP256, ECDSAP384, ECDSAP521, X25519, X448, ECDHP256, ECDHP384, ECDHP521}

// IsSigning reports whether the algorithm signs (as opposed to key agreement).
func (a Algorithm) IsSigning() bool {
	switch a {
	case Ed25519, Ed448, ECDSAP256, ECDSAP384, ECDSAP521:
		return true
	}
	return false
}

// Valid reports whether a is one of Algorithms.
func (a Algorithm) Valid() bool {
	for _, b := range Algorithms {
		if a == b {
			return true
		}
	}
	return false
}

// Protection says where a private key lives and is used. It is reported for
// every key so that callers never mistake a software key for a hardware one.
type Protection string

const (
	// ProtectionHardware: generated inside the device, never extractable,
	// every operation runs inside the device.
	ProtectionHardware Protection = "hardware"
	// ProtectionWrapped: generated inside the device, stored outside it only
	// encrypted under a device-resident key, unwrapped into the device for use.
	ProtectionWrapped Protection = "wrapped"
	// ProtectionSealed: for algorithms the device cannot compute. Generated
	// in the daemon, stored encrypted under a device-resident key, decrypted
	// into daemon memory only for one operation and wiped afterwards.
	ProtectionSealed Protection = "sealed"
)

// Rank orders protection levels from weakest (1) to strongest (3); 0 means
// unknown.
func (p Protection) Rank() int {
	switch p {
	case ProtectionSealed:
		return 1
	case ProtectionWrapped:
		return 2
	case ProtectionHardware:
		return 3
	}
	return 0
}

// DeviceInfo describes the device behind a Backend, for GetInfo and logs.
type DeviceInfo struct {
	Backend string // "pkcs11", "tpm"
	Device  string // e.g. token label, manufacturer and model
	// URI names the device the way its ecosystem does (a PKCS#11 token's
	// RFC 7512 URI); empty where there is none.
	URI string
}

// Backend is the small interface each device implements. It knows keys only
// by the catalog id the keystore assigns and by the opaque reference the
// device returns for it; it knows nothing of MLS.
//
// Every method must be safe for concurrent use. Errors that mean "no such
// object on the device" wrap ErrDeviceKeyNotFound.
type Backend interface {
	Info() DeviceInfo

	// Algorithms reports the algorithms the device can generate and use
	// inside itself (protection level hardware). The keystore falls back to
	// the Sealer capability, if any, for the others.
	Algorithms() []Algorithm

	// Generate creates a non-extractable key pair inside the device, tagged
	// with id so that List can find it again after a crash. It returns the
	// device reference to store in the catalog and the public key in its
	// MLS encoding: 32/57 raw bytes for Ed25519/Ed448, the raw u-coordinate
	// for X25519/X448, the uncompressed point for the NIST curves.
	Generate(ctx context.Context, id string, alg Algorithm) (ref []byte, pub []byte, err error)

	// Sign signs with a signing key. For ECDSA, msg is the digest (the
	// caller hashes) and the result is the raw fixed-width r||s; for EdDSA,
	// msg is the whole message and the result is the RFC 8032 signature.
	Sign(ctx context.Context, ref []byte, alg Algorithm, msg []byte) ([]byte, error)

	// ECDH computes the raw shared secret with a key-agreement key: the
	// u-coordinate for X25519/X448, the x-coordinate for the NIST curves.
	// peer is the peer's public key in the same encoding as Generate's pub;
	// the caller has already checked that it is a valid point.
	ECDH(ctx context.Context, ref []byte, alg Algorithm, peer []byte) ([]byte, error)

	// Destroy removes the private key (and its public half) from the
	// device. Destroying a key that is already gone is not an error.
	Destroy(ctx context.Context, ref []byte) error

	Close() error
}

// Lister is the capability of a device that stores keys itself (a PKCS#11
// token): List returns every key on the device that this daemon created,
// as (id, ref) pairs, so that start-up can reconcile device and catalog.
//
// A device without it keeps no per-key state (a TPM: the reference is the
// key's encrypted blob, loadable only by that device). For such a device the
// reference is the key: retiring a key also erases the reference from the
// catalog, and there is nothing on the device to reconcile.
type Lister interface {
	List(ctx context.Context) ([]DeviceKey, error)
}

// StartupFinisher is the capability of a device that keeps what it read at
// start-up for start-up's own calls (PKCS#11: one pass over the token
// serves Binding, List and Epochs, where each would search it). Open calls
// StartupDone when it returns, whether it succeeded or not; later calls
// read the device again.
type StartupFinisher interface {
	StartupDone()
}

// DeviceKey is one key found on the device by Lister.List.
type DeviceKey struct {
	ID  string
	Ref []byte
	// Check, if set, is Checker.Check of this key judged on what the
	// listing already read from the device: the same answer without a
	// device call per key, which start-up makes for every hardware key.
	// Nil means ask the Checker.
	Check func(alg Algorithm) error
}

// Sealer is an optional Backend capability: encryption under a key that
// never leaves the device. The keystore uses it for protection level sealed.
// aad binds a blob to the key it protects, so blobs cannot be swapped
// between catalog entries.
type Sealer interface {
	Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Unseal(ctx context.Context, blob, aad []byte) ([]byte, error)
}

// Checker is an optional Backend capability: it confirms that a key with
// protection level hardware is still present and was never extractable
// (PKCS#11 CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE). The keystore
// calls it for every hardware key at start-up.
type Checker interface {
	Check(ctx context.Context, ref []byte, alg Algorithm) error
}

// Attester is an optional Backend capability: evidence, signed by the
// device, that a key lives in it, bound to a verifier's nonce.
type Attester interface {
	Attest(ctx context.Context, ref []byte, alg Algorithm, nonce []byte) (*Attestation, error)
}

// Attestation is device evidence for one key. Its fields are opaque to the
// keystore; Format says how to read them (see the backend's verifier).
type Attestation struct {
	Format         string
	Statement      []byte
	Signature      []byte
	AttestationKey []byte
	KeyPublicArea  []byte
	Certificates   [][]byte
	// EndorsementKey is the public key a verifier encrypts a credential
	// to (for a TPM: the TPMT_PUBLIC of the endorsement key whose
	// certificate is among Certificates), so that CredentialActivator can
	// prove the attestation key lives beside it.
	EndorsementKey []byte
}

// CredentialActivator is an optional Backend capability: it decrypts a
// credential a verifier made for the attestation key of an Attestation,
// encrypted to its endorsement key (TPM2_ActivateCredential). Only the
// device holding both keys can, which ties the attestation key to the
// endorsement key and its certificate.
type CredentialActivator interface {
	ActivateCredential(ctx context.Context, endorsementKey, credentialBlob, secret []byte) ([]byte, error)
}

// DeviceObserver is told of every operation a device performs, for the
// metrics. A device calls it from the one place all of its operations pass
// through (the PKCS#11 session pool, the TPM command queue), so whatever a
// device learns to do later is observed without a wrapper that would have
// to repeat its optional capabilities. op is one of a short fixed set of
// names (generate, sign, ecdh, destroy, list, check, seal, unseal, ...);
// d includes the wait for a session or for the TPM; err is the operation's
// error, for sorting by kind. It must be quick and safe for concurrent
// use.
type DeviceObserver interface {
	ObserveDeviceOp(op string, d time.Duration, err error)
}

// Errors a Backend or the keystore return, matched with errors.Is.
var (
	ErrDeviceKeyNotFound    = errors.New("key not found on the device")
	ErrUnsupportedAlgorithm = errors.New("algorithm not supported by the device")
	ErrInvalidPeerKey       = errors.New("invalid peer public key")
	ErrNotFound             = errors.New("key not found")
	ErrWrongRole            = errors.New("key has the wrong role")
	ErrNotActive            = errors.New("key is not active")
	ErrPolicy               = errors.New("refused by policy")
	ErrInvalidArgument      = errors.New("invalid argument")
	ErrUnsupported          = errors.New("operation not supported by the device")
)

// DeviceError wraps a device failure with the operation that failed, so the
// message names what went wrong without exposing key material.
type DeviceError struct {
	Op  string
	Err error
}

// Error names the operation once: a DeviceError wrapping another (the
// keystore's "sign with key K" around a backend's "pkcs11 sign") prints
// "device sign with key K: pkcs11 sign: ...", without a second "device".
func (e *DeviceError) Error() string {
	msg := fmt.Sprint(e.Err)
	var inner *DeviceError
	if errors.As(e.Err, &inner) {
		msg = strings.TrimPrefix(msg, "device ")
	}
	return OneLine(fmt.Sprintf("device %s: %s", e.Op, msg))
}
func (e *DeviceError) Unwrap() error { return e.Err }

// ForeignKeyError is returned by a Checker when the device refuses a key's
// object because another device, or another root key of this one, made it.
// The key is not lost: the catalog belongs to another device, and the
// daemon was most likely started on the wrong state directory.
type ForeignKeyError struct {
	Device string // "TPM"
	Code   string // the device's refusal, "TPM_RC_INTEGRITY"
	Owner  string // who made the object: "another TPM or storage root key"
	Err    error
}

func (e *ForeignKeyError) Error() string {
	return fmt.Sprintf("blob does not load on this %s (%s): this catalog belongs to %s", e.Device, e.Code, e.Owner)
}

func (e *ForeignKeyError) Unwrap() error { return e.Err }

// Wrapper is an optional capability of an Epocher: key-agreement keys
// generated inside the device, stored outside it only wrapped under the
// epoch's device-resident wrapping key, and unwrapped into the device for
// each use (protection level wrapped). The device then holds one key per
// epoch however many such keys exist. The blob is opaque to the keystore;
// the device refuses a blob that does not hold the key of pub (so a blob
// moved to another record does not serve it) and one whose epoch is gone
// (an error wrapping ErrEpochDestroyed).
type Wrapper interface {
	// WrapSupport says whether keys of alg can be wrapped on this device
	// and, if not, why (what its probe found).
	WrapSupport(alg Algorithm) (ok bool, why string)
	GenerateWrapped(ctx context.Context, epoch, id string, alg Algorithm) (blob, pub []byte, err error)
	// ECDHWrapped is Backend.ECDH for a wrapped key.
	ECDHWrapped(ctx context.Context, blob []byte, id string, alg Algorithm, pub, peer []byte) ([]byte, error)
	// RewrapIn moves a wrapped key to another epoch without it leaving
	// the device in clear.
	RewrapIn(ctx context.Context, epoch string, blob []byte, id string, alg Algorithm, pub []byte) ([]byte, error)
}
