// Package pkcs11 is the PKCS#11 device backend of mlskeyd: it keeps private
// keys inside a token (SoftHSM 2 in tests and development, an HSM in
// production) and implements keystore.Backend, keystore.Epocher (sealing),
// keystore.Lister and keystore.Checker. It knows nothing of MLS or gRPC.
//
// # Keys and objects
//
// Every key pair is a pair of token objects with CKA_ID = the catalog id and
// CKA_LABEL = "mlskeyd:"+id. The private half is created with CKA_TOKEN,
// CKA_PRIVATE and CKA_SENSITIVE true, CKA_EXTRACTABLE false, and CKA_SIGN or
// CKA_DERIVE as the algorithm needs; the public half is a public token
// object (CKA_PRIVATE false). The reference Generate returns is 0x01 || id
// (see EncodeRef): objects are found again by class, CKA_ID and CKA_LABEL,
// because object handles do not survive a logout or another process. Found
// handles are cached and dropped on CKR_OBJECT_HANDLE_INVALID.
//
// Algorithms: Ed25519 and Ed448 with CKM_EC_EDWARDS_KEY_PAIR_GEN and
// single-part CKM_EDDSA; ECDSA P-256/384/521 with CKM_EC_KEY_PAIR_GEN and
// CKM_ECDSA over the caller's digest (raw r||s out); ECDH with
// CKM_ECDH1_DERIVE (CKD_NULL) into a non-token, extractable generic secret
// that is read and destroyed at once. For X25519 and X448, Open probes the
// PKCS#11 3.0 route (CKM_EC_MONTGOMERY_KEY_PAIR_GEN, CKK_EC_MONTGOMERY) and
// then SoftHSM 2.6's non-standard one (the Edwards generator with the
// curve25519/curve448 OID), checking a derivation against crypto/ecdh (for
// X448, two device keys against each other); Route and Info report the
// choice. Every other algorithm is also probed with a session key before
// Algorithms reports it.
//
// Sealing uses one token AES-256 key per epoch (keystore.Epocher), labelled
// "mlskeyd:seal-epoch" with CKA_ID = the epoch id, with CKM_AES_GCM: blob =
// 0x02 || len(epoch) || epoch || 12-byte random IV || ciphertext || 16-byte
// tag, header and the caller's aad authenticated. Every search for a
// private or sealing key requires CKA_PRIVATE=true and the expected
// CKA_KEY_TYPE, so public objects planted without the PIN are never found;
// every sealing key must be a LOCAL, ALWAYS_SENSITIVE, NEVER_EXTRACTABLE,
// sensitive, unextractable 32-byte AES key, or Epochs (and so start-up)
// fails. Version 1 blobs (0x01 || IV || ciphertext || tag) still open under
// "mlskeyd:seal-v1" keys, which are never used to seal.
// Sealing is probed at Open (with throwaway session keys); a token
// without working AES-GCM (p11-kit 0.24 forwards none) seals in the
// "hmac-kdf" mode instead: its epoch keys are 32-byte CKK_GENERIC_SECRET
// keys labelled "mlskeyd:seal-hmac-epoch" (CKA_ID = the epoch id, found
// and checked by the same rules), each blob's AES-GCM key derived with
// CKM_SHA256_HMAC and blob = 0x03 || len(epoch) || epoch || salt ||
// ciphertext || tag (see sealprobe.go). A token that can do neither
// reports it in SealError and the keystore offers no sealed keys.
//
// # Device loss
//
// A token that disappears (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
// CKR_TOKEN_NOT_PRESENT, a session still lost after a fresh login, a
// failed idle check) makes every call fail fast with an error wrapping
// keystore.ErrDeviceUnavailable while a goroutine re-initialises the module,
// finds the token again by label and serial, logs in and repeats the
// probes, with exponential backoff (Config.RecoveryMaxBackoff); Health and
// HealthChanged report it (keystore.HealthReporter). See recover.go.
//
// # p11-kit helpers
//
// StartP11KitServer runs p11-kit-server exporting one token (in its own
// process group, so Kill loses the device the way a client sees it), for
// tests of forwarded tokens; FindP11Kit finds the server and
// p11-kit-client.so.
//
// # Sessions and concurrency
//
// A PKCS#11 module is initialised once per process: Backends on the same
// module share one C_Initialize (reference counted; the last Close calls
// C_Finalize) and so share the login, which PKCS#11 keeps per application
// and token. Open logs in once; CKR_USER_ALREADY_LOGGED_IN counts as
// success. A read-only "anchor" session is kept open only to hold that
// login, since closing a token's last session logs the user out.
//
// Two goroutines must never use one session at the same time (SoftHSM
// crashes the process with SIGSEGV). Every token call therefore runs inside
// withSession, which lends a session from a pool to exactly one operation.
// The pool holds at most MaxSessions sessions (default min(2*GOMAXPROCS+2,
// 64)), and never more than the token's ulMaxRwSessionCount when the token
// states one. When every session is busy, callers wait until one is free,
// their context is done, or the Backend is closed.
//
// If an operation fails because its session or the login is gone
// (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN,
// CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, ...), the session is closed
// rather than returned to the pool, the module logs in again (reopening the
// anchor if needed) and the operation is retried once on a fresh session. A
// lookup that finds nothing checks the session state first, so that a lost
// login is not mistaken for a missing key. The package never calls
// C_Logout while serving; Close closes sessions and finalises the module
// but does not log out.
//
// All methods are safe for concurrent use. Close waits for operations in
// flight and makes waiting callers return ErrClosed.
//
// # SoftHSM helpers
//
// InitSoftHSM writes a private softhsm2.conf and token directory and sets
// SOFTHSM2_CONF in the process environment; SoftHSM reads it at
// C_Initialize, so it must be called before any Backend on SoftHSM is open
// in the process. SoftHSM.InitToken initialises a token and its user PIN
// through PKCS#11 itself (no softhsm2-util). RandomPIN makes PINs.
//
// # Limitations
//
//   - PKCS#11 calls cannot be cancelled: a context only bounds the wait for a
//     session.
//   - If logging in again fails with a PIN error (for example after another
//     process changed the PIN), the Backend stops trying, so as not to lock
//     the token, and every operation that needs the login fails until it is
//     reopened.
//   - The PIN stays in memory (as a Go string, which cannot be wiped) for
//     re-login.
//   - If another Backend in the process is already logged in to the token,
//     Open accepts the login without checking its own PIN.
//   - A PIN change by another process is not seen until the module is
//     finalised and initialised again (SoftHSM caches token data per process).
//   - Re-initialising the module after a device loss affects every Backend
//     on that module in the process; each of them then reconnects too.
//   - p11-kit-client.so reads P11_KIT_SERVER_ADDRESS once per process.
//   - Handles are cached per module instance. This relies on the module not
//     reusing the handle of a destroyed object for a new one (SoftHSM never
//     does); with such a module a key destroyed by another process could be
//     confused with a newer object until the cache entry is dropped.
//   - Generate checks that the id is unused, but two concurrent Generate
//     calls with the same id (which the keystore never makes) could both
//     succeed; lookups then use the first match and Destroy removes all.
//   - AES-GCM uses random 96-bit IVs: keep the number of SealIn calls under
//     one epoch key well below 2^32.
//   - SoftHSM reports off-curve and low-order ECDH peers as
//     CKR_GENERAL_ERROR, which ECDH maps to keystore.ErrInvalidPeerKey; on
//     another module a genuine internal failure in C_DeriveKey with that
//     code would be reported the same way.
//   - Ed448 signatures use CKM_EDDSA without parameters (pure Ed448, empty
//     context), and the probe can only check their length.
//   - X25519/X448 keys made under SoftHSM's Edwards quirk have CKA_KEY_TYPE
//     CKK_EC_EDWARDS; Check accepts either key type for them.
package pkcs11
