package keystore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Wrapped keys (Wrapper) live in the catalog as blobs, in Record.Sealed,
// under the epoch's wrapping key (Record.Epoch), and move to each new
// epoch like sealed keys, so that destroying an epoch kills every blob of
// it in every copy of the catalog.

// hpkeChoice is the protection a new key-agreement key of one algorithm
// gets, and why.
type hpkeChoice struct {
	p        Protection
	why      string
	explicit bool
}

// chooseHPKE settles, at Open, the protection of each key-agreement
// algorithm the store can serve: the operator's setting
// (Options.HPKEProtection) if any, which must be possible, else wrapped
// where the device can wrap it and today's level otherwise.
func (s *Store) chooseHPKE() error {
	s.hpke = map[Algorithm]hpkeChoice{}
	w, _ := s.be.(Wrapper)
	if s.ep == nil {
		w = nil // wrapping keys live in epochs
	}
	wrapOK := func(a Algorithm) (bool, string) {
		if w == nil {
			return false, fmt.Sprintf("the %s backend cannot wrap keys", s.be.Info().Backend)
		}
		return w.WrapSupport(a)
	}
	// In a fixed order, so that a refusal always names the same algorithm.
	for _, a := range slices.Sorted(maps.Keys(s.opts.HPKEProtection)) {
		p := s.opts.HPKEProtection[a]
		if !a.Valid() || a.IsSigning() {
			return fmt.Errorf("init-key protection for %q: not a key-agreement algorithm: %w", a, ErrInvalidArgument)
		}
		switch p {
		case ProtectionWrapped:
			if ok, why := wrapOK(a); !ok {
				if w == nil && s.be.Info().Backend == "tpm" {
					why = "the tpm backend has no wrapped keys (its keys are already blobs under an epoch parent, loadable only by this TPM)"
				}
				return kinded(ErrUnsupported, "init-key protection wrapped for %s is impossible: %s; use hardware or sealed", a, why)
			}
		case ProtectionHardware:
			if !s.hw[a] {
				return kinded(ErrUnsupported, "init-key protection hardware for %s is impossible: the device cannot compute it; use %s", a, alternatives(w != nil, s.sealer != nil && s.sealErr == nil))
			}
		case ProtectionSealed:
			if s.sealer == nil || s.sealErr != nil {
				return kinded(ErrUnsupported, "init-key protection sealed for %s is impossible: the device cannot seal; use hardware", a)
			}
		default:
			return fmt.Errorf("init-key protection %q for %s: want hardware, wrapped or sealed: %w", p, a, ErrInvalidArgument)
		}
		s.hpke[a] = hpkeChoice{p: p, explicit: true, why: "set by the operator"}
	}
	for _, a := range Algorithms {
		if a.IsSigning() {
			continue
		}
		if _, ok := s.hpke[a]; ok || w == nil {
			continue // without wrapping there is no choice to explain
		}
		ok, why := wrapOK(a)
		switch {
		case ok:
			s.hpke[a] = hpkeChoice{p: ProtectionWrapped, why: "default: the device wraps it (a constant number of device objects)"}
		case s.hw[a]:
			s.hpke[a] = hpkeChoice{p: ProtectionHardware, why: "default: not wrapped because " + why}
		}
	}
	return nil
}

func alternatives(wrap, seal bool) string {
	var alts []string
	if wrap {
		alts = append(alts, "wrapped")
	}
	if seal {
		alts = append(alts, "sealed")
	}
	if len(alts) == 0 {
		return "another suite"
	}
	return strings.Join(alts, " or ")
}

// HPKEProtection reports the protection new key-agreement keys of alg get
// and why, for status and GetInfo; "" when the algorithm's level is not a
// choice (the device computes it neither way: sealed or unavailable).
func (s *Store) HPKEProtection(alg Algorithm) (Protection, string) {
	c, ok := s.hpke[alg]
	if !ok {
		return "", ""
	}
	return c.p, c.why
}

// generateWrapped makes a wrapped key in the current epoch.
func (s *Store) generateWrapped(ctx context.Context, r *Record) (func(), error) {
	w, ok := s.be.(Wrapper)
	if !ok || s.ep == nil {
		return nil, fmt.Errorf("protection wrapped: %w", ErrUnsupported)
	}
	epoch, unpin := s.pinEpoch()
	blob, pub, err := w.GenerateWrapped(ctx, epoch, r.ID, r.Algorithm)
	if err != nil {
		unpin()
		return nil, deviceErr("generate wrapped "+string(r.Algorithm), err)
	}
	r.Epoch, r.Sealed, r.PublicKey = epoch, blob, pub
	return unpin, nil
}

// wrappedDH derives with a wrapped key. A rotation may have moved the key
// to a newer epoch since the caller read the record.
func (s *Store) wrappedDH(ctx context.Context, r *Record, peer []byte) ([]byte, error) {
	w, ok := s.be.(Wrapper)
	if !ok {
		return nil, fmt.Errorf("key %q is wrapped but the device cannot unwrap: %w", r.ID, ErrUnsupportedAlgorithm)
	}
	z, err := w.ECDHWrapped(ctx, r.Sealed, r.ID, r.Algorithm, r.PublicKey, peer)
	if errors.Is(err, ErrEpochDestroyed) {
		if cur, gerr := s.cat.get(r.ID); gerr == nil && cur.Live() && cur.Epoch != r.Epoch {
			z, err = w.ECDHWrapped(ctx, cur.Sealed, cur.ID, cur.Algorithm, cur.PublicKey, peer)
		}
	}
	if err != nil {
		if errors.Is(err, ErrInvalidPeerKey) || errors.Is(err, ErrInvalidArgument) {
			return nil, err
		}
		return nil, &DeviceError{Op: "ecdh with wrapped key " + r.ID, Err: err}
	}
	return z, nil
}

// rewrap is reseal for a wrapped key: its blob moves to epoch cur.
func (s *Store) rewrap(ctx context.Context, r *Record, cur string) ([]byte, error) {
	w, ok := s.be.(Wrapper)
	if !ok {
		return nil, fmt.Errorf("key %q is wrapped but the device cannot unwrap: %w", r.ID, ErrUnsupported)
	}
	blob, err := w.RewrapIn(ctx, cur, r.Sealed, r.ID, r.Algorithm, r.PublicKey)
	if err != nil {
		return nil, &DeviceError{Op: "rewrap key " + r.ID, Err: err}
	}
	return blob, nil
}
