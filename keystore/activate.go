package keystore

import (
	"context"
	"fmt"
)

// ActivateCredential has the device decrypt a credential for its
// attestation key (see CredentialActivator), on behalf of a caller
// attesting key id, which must be an active hardware key.
// ErrUnsupported means the device cannot.
func (s *Store) ActivateCredential(ctx context.Context, id string, endorsementKey, credentialBlob, secret []byte) ([]byte, error) {
	ca, ok := s.be.(CredentialActivator)
	if !ok {
		return nil, fmt.Errorf("%s backend: %w", s.be.Info().Backend, ErrUnsupported)
	}
	r, err := s.cat.get(id)
	if err != nil {
		return nil, err
	}
	if r.State != StateActive || r.Protection != ProtectionHardware {
		return nil, kinded(ErrNotActive, "key %q is not an active hardware key", id)
	}
	out, err := ca.ActivateCredential(ctx, endorsementKey, credentialBlob, secret)
	if err != nil {
		return nil, &DeviceError{Op: "activate credential", Err: err}
	}
	return out, nil
}
