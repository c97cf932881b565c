package server

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// KeyPackageDefaults is the operator's capabilities profile: what the MLS
// engines on this host support beyond what the daemon derives, added to
// every CreateKeyPackages request so callers need not repeat it. It is the
// config file's "policy.keypackage_defaults".
type KeyPackageDefaults struct {
	CipherSuites CapabilityList `json:"cipher_suites,omitempty"`
	Extensions   CapabilityList `json:"extensions,omitempty"`
	Proposals    CapabilityList `json:"proposals,omitempty"`
	// Credentials accepts "basic" and "x509" besides numbers.
	Credentials CapabilityList `json:"credentials,omitempty"`
	// Grease (default true) adds GREASE values (RFC 9420 §13.5) to every
	// KeyPackage's capabilities unless the request says no_grease.
	Grease *bool `json:"grease,omitempty"`
}

// CapabilityList is a list of 16-bit code points, written in JSON as
// numbers or strings ("0x000a", "10", and for credentials "basic", "x509").
type CapabilityList []uint16

func (l *CapabilityList) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("want a list of numbers or names")
	}
	out := make(CapabilityList, 0, len(raw))
	for _, r := range raw {
		var n uint16
		if err := json.Unmarshal(r, &n); err == nil {
			out = append(out, n)
			continue
		}
		var s string
		if err := json.Unmarshal(r, &s); err != nil {
			return fmt.Errorf("%s is not a 16-bit number or a name", r)
		}
		v, err := ParseCodePoint(s)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	*l = out
	return nil
}

// ParseCodePoint reads a 16-bit code point: decimal, 0x-hex, or the
// credential type names basic and x509.
func ParseCodePoint(s string) (uint16, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "basic":
		return mls.CredentialTypeBasic, nil
	case "x509":
		return mls.CredentialTypeX509, nil
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a 16-bit number (or basic, x509)", s)
	}
	return uint16(v), nil
}

func (d *KeyPackageDefaults) check() error {
	for _, t := range d.Extensions {
		if t >= 1 && t <= 5 {
			return fmt.Errorf("policy.keypackage_defaults.extensions: %d is a default extension type, which RFC 9420 §7.2 forbids listing", t)
		}
	}
	for _, t := range d.Proposals {
		if t >= 1 && t <= 7 {
			return fmt.Errorf("policy.keypackage_defaults.proposals: %d is a default proposal type, which RFC 9420 §7.2 forbids listing", t)
		}
	}
	return nil
}

// withDefaults adds the profile to a request's extra capabilities.
func (d *KeyPackageDefaults) withDefaults(c mls.Capabilities) mls.Capabilities {
	merge := func(list []uint16, add []uint16) []uint16 {
		for _, v := range add {
			if !containsU16(list, v) {
				list = append(list, v)
			}
		}
		return list
	}
	c.CipherSuites = merge(c.CipherSuites, d.CipherSuites)
	c.Extensions = merge(c.Extensions, d.Extensions)
	c.Proposals = merge(c.Proposals, d.Proposals)
	c.Credentials = merge(c.Credentials, d.Credentials)
	return c
}

func containsU16(list []uint16, v uint16) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// capabilitiesFor returns the capabilities of one KeyPackage of req: the
// request's, the profile's and, unless turned off, fresh GREASE values.
func (s *Service) capabilitiesFor(req *pb.CreateKeyPackagesRequest, c mls.Capabilities) mls.Capabilities {
	d := &s.opts.Policy.KeyPackageDefaults
	c = d.withDefaults(c)
	if req.GetNoGrease() || (d.Grease != nil && !*d.Grease) {
		return c
	}
	return mls.AddGrease(c)
}
