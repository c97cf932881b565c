package server

import (
	"fmt"
	"maps"
	"time"
)

// policyState is what a policy reload replaces as a whole: a call reads
// it once and sees either the old or the new policy, never a mix.
type policyState struct {
	Policy
	defaultLifetime, maxLifetime time.Duration
	limit                        *limiter
}

// newPolicyState applies p's KeyPackage lifetimes over the daemon's
// (flags) and keeps the rate limiter's buckets when the limit is the same,
// so a reload does not hand every caller a fresh burst.
func newPolicyState(p Policy, defaultLifetime, maxLifetime time.Duration, now func() time.Time, old *policyState) *policyState {
	if d := time.Duration(p.KeyPackageDefaultLifetime); d > 0 {
		defaultLifetime = d
	}
	if d := time.Duration(p.KeyPackageMaxLifetime); d > 0 {
		maxLifetime = d
	}
	// A maximum below the default lowers the default with it.
	defaultLifetime = min(defaultLifetime, maxLifetime)
	st := &policyState{Policy: p, defaultLifetime: defaultLifetime, maxLifetime: maxLifetime}
	if old != nil && old.limit.rate == p.RateLimit {
		st.limit = old.limit
	} else {
		st.limit = &limiter{rate: p.RateLimit, now: now}
	}
	return st
}

func (s *Service) pol() *policyState { return s.policy.Load() }

// SetPolicy replaces the policy (SIGHUP). Calls in flight finish under the
// policy they started with; the next ones get the new one. Minimum
// protection levels are enforced by the keystore as keys are created and
// are fixed at start-up: a policy that changes them is refused, and the
// old one stays.
func (s *Service) SetPolicy(p Policy) error {
	if err := p.Check(); err != nil {
		return err
	}
	old := s.pol()
	if !maps.Equal(normalizedMinProtection(old.MinProtection), normalizedMinProtection(p.MinProtection)) {
		return fmt.Errorf("policy.min_protection changed (%v to %v): the key store applies it from start-up; restart mlskeyd to change it", old.MinProtection, p.MinProtection)
	}
	s.policy.Store(newPolicyState(p, s.opts.DefaultLifetime, s.opts.MaxLifetime, s.opts.Now, old))
	return nil
}

func normalizedMinProtection(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
