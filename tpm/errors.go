package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var (
	// ErrBusy is wrapped when a caller could not get the TPM before its
	// deadline (the context's or Config.CommandTimeout, whichever is
	// first). The TPM runs one command at a time, so a long queue shows up
	// here rather than as a TPM error; the daemon reports it as
	// UNAVAILABLE.
	ErrBusy = fmt.Errorf("tpm: %w", keystore.ErrDeviceBusy)
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("tpm: backend closed")
	// ErrForeignBlob is wrapped when the TPM refuses a blob with
	// TPM_RC_INTEGRITY: it was made by another TPM, or under another
	// storage root key (for example after the owner hierarchy was cleared,
	// or with another simulator seed).
	ErrForeignBlob = errors.New("tpm: blob was made by another TPM or under another storage root key")
	// ErrBadBlob is wrapped when a key reference or sealed blob cannot be
	// parsed or does not describe what it should.
	ErrBadBlob = errors.New("tpm: invalid blob")
	// ErrNotProtected is wrapped by Check when the public area of a key
	// does not prove that it was generated inside the TPM and can never
	// leave it (fixedTPM, fixedParent, sensitiveDataOrigin).
	ErrNotProtected = errors.New("tpm: key is not hardware-protected")
	// ErrSealedBlob is wrapped by Unseal when the blob does not belong to
	// the aad, or its content is malformed.
	ErrSealedBlob = errors.New("tpm: sealed blob does not match its aad")
)

// devErr wraps err with the operation name, as the PKCS#11 backend does.
// The go-tpm TPMRC inside prints the TPM_RC name.
func devErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *keystore.DeviceError
	if errors.As(err, &de) && de.Op == "tpm "+op {
		return err
	}
	return &keystore.DeviceError{Op: "tpm " + op, Err: err}
}

// cmdErr names the TPM command that failed and, for TPM_RC_INTEGRITY on a
// load, says what it means.
func cmdErr(command string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, tpm2.TPMRCIntegrity) {
		return fmt.Errorf("%s: %w: %w", command, ErrForeignBlob, err)
	}
	return fmt.Errorf("%s: %w", command, err)
}

// isRC reports whether err carries one of the response codes (format-1
// codes match by their canonical value, whatever handle or parameter they
// name).
func isRC(err error, rcs ...tpm2.TPMRC) bool {
	for _, rc := range rcs {
		if errors.Is(err, rc) {
			return true
		}
	}
	return false
}
