package server

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

func TestPolicyRules(t *testing.T) {
	var p Policy
	err := json.Unmarshal([]byte(`{
		"allowed_suites": [1, 2],
		"allowed_labels": {"signature": ["LeafNodeTBS", "KeyPackageTBS", "FramedContentTBS"], "init": []},
		"keys": {"00112233445566778899aabbccddeeff": {"allowed_labels": ["KeyPackageTBS"], "strict_content": false}},
		"keypackage_default_lifetime": "7d", "keypackage_max_lifetime": "720h"
	}`), &p)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	sig := &keystore.Record{ID: "ffeeddccbbaa99887766554433221100", Role: keystore.RoleSignature}
	special := &keystore.Record{ID: "00112233445566778899aabbccddeeff", Role: keystore.RoleSignature}
	init := &keystore.Record{ID: "aa", Role: keystore.RoleInit}
	for _, c := range []struct {
		r     *keystore.Record
		label string
		want  bool
	}{
		{sig, "LeafNodeTBS", true},
		{sig, "GroupInfoTBS", false},
		{special, "KeyPackageTBS", true},
		{special, "LeafNodeTBS", false}, // the key narrows its role's list
		{init, "Welcome", false},        // an empty list allows nothing
	} {
		if got := p.labelAllowed(c.r, c.label); got != c.want {
			t.Errorf("%s key %s, label %s: %v, want %v", c.r.Role, c.r.ID, c.label, got, c.want)
		}
	}
	if !p.suiteAllowed(2) || p.suiteAllowed(7) {
		t.Error("allowed suites")
	}
	if !p.strict(sig.ID) || p.strict(special.ID) {
		t.Error("strict content default and per-key override")
	}
	if time.Duration(p.KeyPackageDefaultLifetime) != 7*24*time.Hour {
		t.Errorf("7d = %v", time.Duration(p.KeyPackageDefaultLifetime))
	}

	for name, bad := range map[string]Policy{
		"label of another role":  {AllowedLabels: map[string][]string{"leaf_encryption": {"LeafNodeTBS"}}},
		"unknown role":           {AllowedLabels: map[string][]string{"admin": {}}},
		"unknown suite":          {AllowedSuites: []uint16{8}},
		"default over maximum":   {KeyPackageDefaultLifetime: Duration(48 * time.Hour), KeyPackageMaxLifetime: Duration(time.Hour)},
		"negative limit":         {MaxOutstandingKeyPackages: -1},
		"bad key id in per-key":  {Keys: map[string]KeyPolicy{"nope": {}}},
		"unknown protection":     {MinProtection: map[string]string{"init": "tamper-proof"}},
		"label outside RFC 9420": {Keys: map[string]KeyPolicy{"00": {AllowedLabels: []string{"Hello"}}}},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &limiter{rate: RateLimit{PerSecond: 2, Burst: 3}, now: func() time.Time { return now }}
	for i := range 3 {
		if !l.allow(7) {
			t.Fatalf("call %d within the burst refused", i)
		}
	}
	if l.allow(7) {
		t.Fatal("call past the burst allowed")
	}
	if !l.allow(8) {
		t.Fatal("another uid shares the first one's bucket")
	}
	now = now.Add(500 * time.Millisecond) // one token back at 2/s
	if !l.allow(7) || l.allow(7) {
		t.Fatal("refill is not 2 per second")
	}
	unlimited := &limiter{now: time.Now}
	for range 1000 {
		if !unlimited.allow(1) {
			t.Fatal("no rate limit configured, yet refused")
		}
	}
}

func TestKeyPackageDefaults(t *testing.T) {
	var p Policy
	if err := json.Unmarshal([]byte(`{"keypackage_defaults": {"credentials": ["basic", "x509", 0xf000], "extensions": ["0xff01", 10], "grease": false}}`), &p); err == nil {
		t.Fatal("a JSON hex literal was accepted")
	}
	err := json.Unmarshal([]byte(`{"keypackage_defaults": {"credentials": ["basic", "x509", 61440], "extensions": ["0xff01", 10], "proposals": ["8"], "cipher_suites": [1, "0x004d"], "grease": false}}`), &p)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	d := p.KeyPackageDefaults
	if !slices.Equal(d.Credentials, []uint16{1, 2, 0xf000}) || !slices.Equal(d.Extensions, []uint16{0xff01, 10}) ||
		!slices.Equal(d.Proposals, []uint16{8}) || !slices.Equal(d.CipherSuites, []uint16{1, 0x4d}) || *d.Grease {
		t.Fatalf("defaults = %+v", d)
	}
	c := d.withDefaults(mls.Capabilities{Credentials: []uint16{2, 3}})
	if !slices.Equal(c.Credentials, []uint16{2, 3, 1, 0xf000}) {
		t.Errorf("merged credentials = %v", c.Credentials)
	}
	for _, bad := range []string{
		`{"keypackage_defaults": {"extensions": [3]}}`,
		`{"keypackage_defaults": {"proposals": [7]}}`,
	} {
		var p Policy
		if err := json.Unmarshal([]byte(bad), &p); err != nil {
			t.Fatal(err)
		}
		if err := p.Check(); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	var q Policy
	if err := json.Unmarshal([]byte(`{"keypackage_defaults": {"credentials": ["x500"]}}`), &q); err == nil {
		t.Error("an unknown credential name was accepted")
	}
}
