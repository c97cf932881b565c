package server

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

func TestSetPolicy(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewService(nil, Options{Now: func() time.Time { return now },
		DefaultLifetime: 90 * 24 * time.Hour, MaxLifetime: 365 * 24 * time.Hour,
		Policy: Policy{MinProtection: map[string]string{"signature": "hardware"}, RateLimit: RateLimit{PerSecond: 1, Burst: 2}}})
	old := s.pol()
	old.limit.allow(7)
	old.limit.allow(7)
	if old.limit.allow(7) {
		t.Fatal("burst of 2 allowed a third call")
	}

	// New lifetimes and suites apply; the same rate limit keeps its
	// buckets, so a reload hands nobody a fresh burst.
	err := s.SetPolicy(Policy{MinProtection: map[string]string{"signature": "hardware"}, AllowedSuites: []uint16{1},
		KeyPackageMaxLifetime: Duration(30 * 24 * time.Hour), RateLimit: RateLimit{PerSecond: 1, Burst: 2}})
	if err != nil {
		t.Fatal(err)
	}
	p := s.pol()
	if p.maxLifetime != 30*24*time.Hour || p.defaultLifetime != 30*24*time.Hour || !p.suiteAllowed(1) || p.suiteAllowed(2) {
		t.Fatalf("new policy not applied: %+v", p)
	}
	if p.limit != old.limit || p.limit.allow(7) {
		t.Fatal("rate limiter reset by a reload that kept the limit")
	}
	// Back to no lifetime bound in the policy: the daemon's own apply.
	if err := s.SetPolicy(Policy{MinProtection: map[string]string{"signature": "hardware"}}); err != nil {
		t.Fatal(err)
	}
	if p := s.pol(); p.maxLifetime != 365*24*time.Hour || p.defaultLifetime != 90*24*time.Hour || p.limit == old.limit {
		t.Fatalf("after a second reload: %+v", p)
	}

	// Refused, and the policy in force stays.
	before := s.pol()
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{MinProtection: map[string]string{"signature": "hardware", "init": "hardware"}}, "policy.min_protection changed"},
		{Policy{}, "policy.min_protection changed"},
		{Policy{MinProtection: map[string]string{"signature": "hardware"}, AllowedSuites: []uint16{99}}, "policy.allowed_suites"},
	} {
		if err := s.SetPolicy(c.p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
		if s.pol() != before {
			t.Errorf("%+v: refused policy replaced the old one", c.p)
		}
	}
}

// A reload carries the whole policy: the KeyPackage capabilities profile
// and the last-resort bound apply to the next call, and a profile the
// RFC forbids is refused with the old policy kept.
func TestSetPolicyKeyPackageSettings(t *testing.T) {
	hw := map[string]string{"signature": "hardware"}
	s := NewService(nil, Options{Policy: Policy{MinProtection: hw}})
	if got := s.pol().lastResortLimit(); got != 0 {
		t.Fatalf("last-resort limit %d before the reload", got)
	}
	no := false
	err := s.SetPolicy(Policy{MinProtection: hw, MaxLastResortKeyPackages: 2,
		KeyPackageDefaults: KeyPackageDefaults{Extensions: CapabilityList{0xff01}, Grease: &no}})
	if err != nil {
		t.Fatal(err)
	}
	pol := s.pol()
	if got := pol.lastResortLimit(); got != 2 {
		t.Errorf("last-resort limit %d after the reload, want 2", got)
	}
	c := capabilitiesFor(&pol.Policy, &pb.CreateKeyPackagesRequest{}, mls.Capabilities{})
	if !slices.Equal(c.Extensions, []uint16{0xff01}) {
		t.Errorf("capabilities after the reload: %+v", c)
	}
	if err := s.SetPolicy(Policy{MinProtection: hw, KeyPackageDefaults: KeyPackageDefaults{Extensions: CapabilityList{3}}}); err == nil ||
		!strings.Contains(err.Error(), "keypackage_defaults.extensions") {
		t.Errorf("forbidden profile: %v", err)
	}
	if s.pol() != pol {
		t.Error("a refused policy replaced the old one")
	}
}
