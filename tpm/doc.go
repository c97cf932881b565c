// Package tpm is the TPM 2.0 device backend of mlskeyd: it keeps private
// keys under a TPM's storage root key and implements keystore.Backend,
// keystore.Sealer, keystore.Epocher, keystore.EpochGenerator,
// keystore.Checker, keystore.Revoker and keystore.Attester (not
// keystore.Lister: nothing per key lives in the TPM). It talks to /dev/tpmrm0, to swtpm's data channel
// (tcp:// or unix://, raw TPM commands) or to the in-process go-tpm-tools
// simulator, through go-tpm's tpm2 direct API. It knows nothing of MLS or
// gRPC.
//
// # Keys and blobs
//
// Open re-creates the storage root key (SRK) with tpm2.ECCSRKTemplate under
// the owner hierarchy and keeps it loaded. A primary key is derived from
// the hierarchy seed and the template, so it is the same key after every
// restart and nothing is written to the TPM's NV memory.
//
// Generate runs TPM2_Create for an ECC child of the SRK (or of the epoch's
// parent, below) with fixedTPM, fixedParent, sensitiveDataOrigin and
// userWithAuth (empty auth value; for keys with a revocation bit, a
// policy instead, below), and
// either sign with the ECDSA scheme and the curve's hash (P-256 SHA-256,
// P-384 SHA-384, P-521 SHA-512) or decrypt with the ECDH scheme. The key
// reference is 0x01 || TPM2B_PUBLIC || TPM2B_PRIVATE: the private area is
// encrypted and integrity-protected under the SRK, so the blob is useless
// to anyone but this TPM, and its holder (the catalog) is its only store.
// A blob from another TPM or another SRK fails TPM2_Load with
// TPM_RC_INTEGRITY, reported as ErrForeignBlob (and, from Check, inside a
// keystore.ForeignKeyError, so that start-up can say the catalog belongs to
// another TPM).
//
// Sign uses TPM2_Sign with a NULL hash-check ticket (the keys are not
// restricted) over a digest exactly as long as the scheme's hash and
// returns r||s at fixed width. ECDH uses TPM2_ECDH_ZGen and returns the
// x-coordinate; TPM_RC_ECC_POINT becomes keystore.ErrInvalidPeerKey.
// Check reads the public area (type, curve, scheme, role, fixedTPM,
// fixedParent, sensitiveDataOrigin) and then loads the key, which proves
// the blob belongs to this TPM.
//
// Seal stores sha256(aad) || plaintext (at most MaxSealInput bytes) in a
// KEYEDHASH sealed data object under the SRK; the blob is 0x02 ||
// TPM2B_PUBLIC || TPM2B_PRIVATE. Unseal loads it, runs TPM2_Unseal, flushes
// it and compares the aad hash in constant time.
//
// Epochs (epoch.go): SealIn and GenerateIn work the same way under an
// epoch's parent, a storage key made persistent at a handle from
// 0x814D4C00 whose blob is never stored, so DestroyEpoch (TPM2_EvictControl)
// makes every blob of the epoch unloadable. Their blobs carry the epoch id
// (versions 0x03 and 0x04).
//
// Revocation bits (revoke.go): an ECDH key (the HPKE keys: KeyPackage init
// and leaf encryption keys) is, where the TPM allows, bound to one bit of
// an NV bit field (TPM_NT_BITS, 64 bits, at 0x01004D00 and up, at most
// Config.RevocationIndices of them): userWithAuth is clear and its
// authPolicy is TPM2_PolicyNV(index, its mask, offset 0, TPM_EO_BITCLEAR).
// ECDH runs TPM2_PolicyNV in a salted policy session (AES-128-CFB on the
// response) and uses it for TPM2_ECDH_ZGen; Destroy sets the bit with
// TPM2_NV_SetBits (owner authorisation), after which no copy of the blob
// works. The blob is 0x05 || revocation || len(epoch) || epoch ||
// TPM2B_PUBLIC || TPM2B_PRIVATE, and Check fails with keystore.ErrRevoked
// for a key whose bit is set or whose index is gone. Reclaim undefines an
// index whose bits are all set; its authPolicy holds random bytes, so an
// index defined again at the same handle has another Name and revives
// nothing. When the budget is spent or the TPM refuses
// TPM2_NV_DefineSpace, the key is made without a bit (RevocationNote says
// why). Signature keys get one only with Config.RevokeSignatureKeys
// (--tpm-revocation-roles all; same indices, budget and fallback): Sign
// then runs TPM2_PolicyNV in a policy session, neither salted nor bound
// (a signature is no secret), and authorises TPM2_Sign with it. The
// session is kept across a run of signatures, since the TPM resets a
// policy session's digest after each successful use with continueSession;
// after any failure, on reconnection, before any other session is started
// and at the idle health check it is flushed, and the next signature
// starts another (so a long-saved context never widens the TPM's context
// gap). So a bit costs one TPM2_PolicyNV per signature, not also
// TPM2_StartAuthSession and TPM2_FlushContext. The blob, not the setting,
// says whether a key has a bit, so turning the setting off leaves bound
// keys as they are.
//
// Secrets never cross the bus in clear: TPM2_ECDH_ZGen and TPM2_Unseal
// outputs, and the data given to TPM2_Create for sealing, travel under a
// one-command HMAC session salted with the SRK and AES-128-CFB parameter
// encryption.
//
// # Attestation
//
// Attest returns evidence, in the "tpm2-certify" format, that a key lives
// in this TPM: TPM2_Certify over the key, with the verifier's nonce (1 to
// 64 bytes) as qualifying data, signed by an attestation key (AK). The AK
// is a primary key of the endorsement hierarchy made from the TCG AK
// template (ECC P-256, restricted, sign, fixedTPM, fixedParent,
// sensitiveDataOrigin, ECDSA SHA-256), so it is the same key on every
// call; it is created for each attestation and flushed afterwards, and
// cached keys are flushed first so that the SRK, the AK and the key fit
// in three slots. The attestation holds the TPMS_ATTEST, its signature,
// the AK's and the key's TPMT_PUBLIC, any EK certificate found at the
// TCG NV indices (0x01c0000a ECC P-256, 0x01c00002 RSA 2048), and the
// public area of the EK those certificates are for, made from the TCG
// default template (ECC P-256 unless only the RSA certificate exists;
// made once per Backend and kept).
//
// ActivateCredential is the TPM's half of credential activation: it
// re-creates the AK and the EK, checks the EK is the one given, satisfies
// the EK's policy (PolicySecret of the endorsement hierarchy) and runs
// TPM2_ActivateCredential. It decrypts a credential made for the AK's
// Name and encrypted to the EK only when both keys are in this TPM.
//
// attest.VerifyCertify (package tpm/attest) checks it without a TPM: the AK's attributes, the
// signature over the statement, TPM_GENERATED_VALUE, the statement type,
// the nonce, that the certified Name is that of the key's public area,
// that the key has fixedTPM, fixedParent and sensitiveDataOrigin, and
// that its point is the MLS public key. A restricted key signs only
// statements the TPM generated, so this proves that whatever holds the
// AK vouches, now, for a non-exportable TPM-generated key with that public
// key. It does not prove that the AK is in a genuine TPM, or in which
// one: evidence like it can be made in software. attest.Verify adds that:
// with trusted EK CAs it checks the EK certificate chain and makes a
// credential for the AK, encrypted to the EK, which ActivateCredential
// must decrypt; or it compares the AK with one enrolled beforehand.
//
// # Sessions and concurrency
//
// A TPM runs one command at a time, and swtpm serves one client at a
// time, so the Backend keeps one connection and one queue: every command
// runs while holding a one-token channel, which also guards the key cache.
// A caller that does not get its turn before its context deadline or
// Config.CommandTimeout (default 10s), whichever is first, fails with
// ErrBusy; a cancelled context returns its error. A command already sent
// runs to completion.
//
// Loaded keys are kept in an LRU cache of Config.LoadedKeys entries
// (default 2: the SRK and two keys fill the 3 transient slots of swtpm and
// the simulator), keyed by the SHA-256 of the blob; the least recently used
// key is flushed to make room. Parsed key references are kept as well
// (1,024, keyed the same way), and TPM2_Sign under the password session is
// marshalled by hand (signcmd.go), so a signature with a loaded key costs
// the process little besides the round trip. Whenever the TPM answers
// TPM_RC_OBJECT_MEMORY (TPM2_Load, TPM2_Create), cached keys are flushed
// one at a time and the command is tried again. Sealed objects are loaded
// only for one TPM2_Unseal and flushed at once. Destroy flushes a cached
// key; that is all it has to do.
//
// The transport re-sends, after 2, 4, 8, 16 ms, a command answered with
// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING (5 sends in all): the TPM
// did not run it, so the same bytes (session nonces included) are valid
// again. swtpm answers TPM_RC_RETRY to the first command after it restarts
// with saved state.
//
// Without the kernel resource manager (swtpm, the simulator, /dev/tpm0),
// Open flushes every transient object and session it finds, since a
// crashed earlier client leaves them loaded; with /dev/tpmrm0 the kernel
// does this. Open also sends TPM2_Startup(CLEAR) to swtpm, accepting
// TPM_RC_INITIALIZE.
//
// # Limitations
//
//   - Only P-256, P-384 and P-521 (ECDSA and ECDH): TPM 2.0 has no
//     Ed25519, Ed448, X25519 or X448; the keystore seals those keys.
//   - The owner hierarchy's auth value must be empty (it is on swtpm, the
//     simulator and most provisioned machines); clearing the TPM or its
//     owner hierarchy changes the SRK and makes every blob foreign.
//   - Sign needs a digest of exactly the scheme hash's size; MLS cipher
//     suites always match, other combinations are refused.
//   - A transport failure (swtpm or a resource manager restarting, a
//     closed socket) marks the TPM lost: calls fail fast with
//     keystore.ErrDeviceUnavailable until the next command or health check
//     after the backoff reconnects (Startup, stray handles flushed, SRK
//     re-created and compared with the start-up one, curves probed; keys
//     load again on demand). A different SRK stops the attempts. The
//     in-process simulator cannot lose its connection and is not checked.
//     See reconnect.go.
//   - The simulator is one per process: a second Backend on "sim" waits
//     for the first to close (up to CommandTimeout) and then fails with
//     ErrBusy. SimulatorSeed is hashed to the simulator's int64 seed; it
//     is for development and tests only.
//   - Open flushes every transient object and session on a TPM without a
//     resource manager, including those of any other client.
//   - Each ECDH, Seal and Unseal starts a salted session (an extra
//     TPM2_StartAuthSession and an ECDH inside the TPM), which roughly
//     halves their throughput compared with an unprotected command.
//   - Attest and ActivateCredential need the endorsement hierarchy's auth
//     value to be empty, and Attest reads EK certificates with the
//     owner's (empty) auth value; an index it cannot read is left out.
//     EK certificates at other indices (swtpm's ECC P-384 one at
//     0x01c00016, the high-range templates) are not read.
//   - The key auth value is empty and the blob is the credential: anyone
//     with a blob and access to the same TPM can use the key, until it is
//     retired (a key with a revocation bit) or its epoch ends.
//   - Each retirement of a key with a bit is one NV write; real TPMs
//     rate-limit NV writes and their NV wears. Each ECDH or signature with
//     such a key also runs TPM2_PolicyNV (one more command). The kept
//     signing policy session takes one of the TPM's session slots during
//     a run of signatures.
package tpm
