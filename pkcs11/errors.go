package pkcs11

import (
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("pkcs11: backend closed")
	// ErrNotProtected is wrapped by Check when a key's attributes do not
	// prove that it was generated inside the device and never extractable.
	ErrNotProtected = errors.New("pkcs11: key is not hardware-protected")
	// ErrSealedBlob is wrapped by Unseal when the blob is malformed, was
	// tampered with, or does not match the aad.
	ErrSealedBlob = errors.New("pkcs11: sealed blob is invalid or does not match its aad")
	// ErrKeyExists is wrapped when a sealing epoch's id is already in use
	// (key pairs are not checked: their ids are unique by construction).
	ErrKeyExists = errors.New("pkcs11: a key with this id already exists on the device")
)

// ckrCode extracts the CKR_* code from err, if it carries one.
func ckrCode(err error) (uint, bool) {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

func isCode(err error, codes ...uint) bool {
	c, ok := ckrCode(err)
	if !ok {
		return false
	}
	for _, want := range codes {
		if c == want {
			return true
		}
	}
	return false
}

// sessionLost: the session (or the login behind it) is unusable; discard the
// session, log in again and retry once on a fresh session.
func sessionLost(err error) bool {
	return isCode(err,
		p11.CKR_SESSION_HANDLE_INVALID,
		p11.CKR_SESSION_CLOSED,
		p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_DEVICE_REMOVED,
		p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_OPERATION_ACTIVE, // a stuck operation: the session is useless
	)
}

func handleInvalid(err error) bool {
	return isCode(err, p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID)
}

// poisoned marks an error after which the session must not be reused (for
// example a derived secret that could not be destroyed). withSession closes
// the session, which also destroys its session objects, and does not retry.
type poisoned struct{ err error }

func (p *poisoned) Error() string { return p.err.Error() }
func (p *poisoned) Unwrap() error { return p.err }

// devErr wraps err with the operation name. The p11.Error inside prints the
// CKR code and its name. PINs are never part of these messages.
func devErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *keystore.DeviceError
	if errors.As(err, &de) && de.Op == "pkcs11 "+op {
		return err
	}
	return &keystore.DeviceError{Op: "pkcs11 " + op, Err: err}
}

func notFound(id string) error {
	return fmt.Errorf("%w: id %q", keystore.ErrDeviceKeyNotFound, id)
}
