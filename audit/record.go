package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Genesis is the Prev value of the very first record of a log: 64 zeros.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// OperationPrune is the Operation of the record the log writes itself
// when Options.Keep removes old rotated files.
const OperationPrune = "audit.prune"

// Outcome values for Record.Outcome.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeError  = "error"
)

// Record is one audit log entry. It is serialised as a single JSON object on
// a single line.
//
// A Record must never carry secret material or message content: no private
// keys, no plaintext, no ciphertext, no signatures, no passphrases or PINs.
// In particular Reason is a short, human-readable explanation (for example
// "policy: uid 1001 not allowed" or "key not found"); callers must not put
// error strings into it that may embed secrets or content.
type Record struct {
	// Seq is assigned by Log.Append: 1 for the first record, then +1.
	Seq uint64 `json:"seq"`
	// Time is set by Log.Append to the current UTC time when zero.
	Time time.Time `json:"time"`
	// Peer credentials of the caller (SO_PEERCRED) and its executable.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	PID int32  `json:"pid"`
	Exe string `json:"exe"`
	// Operation is the RPC name, e.g. "CreateSignatureKey", "SignWithLabel",
	// "OpenWelcome", "DecryptWithLabel", "DeleteKey", "CreateKeyPackages",
	// "AttestKey"; "Keystore" + an event ("KeystoreDestroyed",
	// "KeystoreQuarantined", "KeystoreRefused", …) for what the daemon did
	// to keys on its own authority (its own uid and pid, the reason in
	// Reason).
	Operation string `json:"operation"`
	// KeyID is the key operated on; may be empty.
	KeyID string `json:"key_id"`
	// KeyIDs lists the keys of a batch operation.
	KeyIDs []string `json:"key_ids,omitempty"`
	// Label is the MLS label of SignWithLabel / EncryptWithLabel style
	// operations (a protocol constant, not content).
	Label string `json:"label,omitempty"`
	// Outcome is one of "ok", "denied", "error".
	Outcome string `json:"outcome"`
	// Code is the gRPC status code name, e.g. "OK", "PermissionDenied".
	Code string `json:"code"`
	// Reason is a short explanation; never secrets or content (see above).
	Reason string `json:"reason,omitempty"`
	// PrunedSeq and PrunedHash, on an OperationPrune record, are the seq
	// and line hash of the last record in the rotated files it removed.
	PrunedSeq  uint64 `json:"pruned_seq,omitempty"`
	PrunedHash string `json:"pruned_hash,omitempty"`
	// Prev is the hex SHA-256 of the previous record's line (without the
	// trailing newline), or Genesis for the first record.
	Prev string `json:"prev"`
}

// hashLine returns hex(SHA-256(line)); line must not include the newline.
func hashLine(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// parseLine decodes one log line (without newline) and checks the fields the
// chain relies on.
func parseLine(line []byte) (Record, error) {
	var r Record
	if len(line) == 0 {
		return r, errors.New("empty line")
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("not a valid JSON record: %v", err)
	}
	if !validHash(r.Prev) {
		return r, fmt.Errorf("prev %q is not a hex SHA-256", r.Prev)
	}
	if r.Seq == 0 {
		return r, errors.New("missing or zero seq")
	}
	return r, nil
}

func validHash(s string) bool {
	if len(s) != 64 || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
