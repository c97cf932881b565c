package mlsops

import "errors"

// FieldError ties a failure to the request field it concerns, for the
// server's status message. It wraps the keystore or mls error unchanged.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, err error) error {
	if err == nil {
		return nil
	}
	return &FieldError{Field: field, Err: err}
}

// Field returns the field err concerns and the error under it; def if err
// names none.
func Field(err error, def string) (string, error) {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Field, fe.Err
	}
	return def, err
}
