package keystore

import "fmt"

// kindError is an error of a kind (ErrNotActive, ErrWrongRole) whose
// message already says what the kind would: wrapping with %w would append
// the sentinel's text ("key … is consumed: key is not active"), repeating
// the cause, and for a key that is active but not attestable, contradicting
// it.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func kinded(kind error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: kind}
}
