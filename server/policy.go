package server

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

// Policy is what the daemon allows, globally and per key. It comes from
// the "policy" object of the config file; every field is optional.
type Policy struct {
	// AllowedSuites limits the cipher suites keys may be created for.
	AllowedSuites []uint16 `json:"allowed_suites,omitempty"`
	// MinProtection is the lowest protection level per role ("signature",
	// "init", "leaf_encryption" → "hardware", "wrapped", "sealed"); the
	// keystore enforces it at creation.
	MinProtection map[string]string `json:"min_protection,omitempty"`
	// AllowedLabels narrows, per role, the RFC 9420 labels a key may be
	// used with: signature keys sign, leaf_encryption keys decrypt.
	AllowedLabels map[string][]string `json:"allowed_labels,omitempty"`
	// KeyPackage lifetimes: the default when a request names none, and the
	// longest a request may ask for (RFC 9420 §10: applications must bound
	// lifetimes).
	KeyPackageDefaultLifetime Duration `json:"keypackage_default_lifetime,omitzero"`
	KeyPackageMaxLifetime     Duration `json:"keypackage_max_lifetime,omitzero"`
	// MaxOutstandingKeyPackages bounds the unused, non-last-resort
	// KeyPackages (active init keys) one owner may hold; 0 means no bound.
	MaxOutstandingKeyPackages int `json:"max_outstanding_keypackages,omitempty"`
	// MaxLastResortKeyPackages bounds the unused last-resort KeyPackages
	// of one owner; 0 means DefaultMaxLastResort when
	// MaxOutstandingKeyPackages is set, and no bound otherwise.
	MaxLastResortKeyPackages int `json:"max_last_resort_keypackages,omitempty"`
	// RateLimit bounds each caller uid's requests.
	RateLimit RateLimit `json:"rate_limit,omitzero"`
	// StrictContent (default true) makes the daemon parse what it is asked
	// to sign as the structure its label names, so a signature key cannot
	// be used to sign anything but MLS messages.
	StrictContent *bool `json:"strict_content,omitempty"`
	// Keys holds per-key rules, by key id.
	Keys map[string]KeyPolicy `json:"keys,omitempty"`
	// KeyPackageDefaults is the capabilities profile added to every
	// CreateKeyPackages request.
	KeyPackageDefaults KeyPackageDefaults `json:"keypackage_defaults,omitzero"`
}

// KeyPolicy narrows the global policy for one key.
type KeyPolicy struct {
	AllowedLabels []string `json:"allowed_labels,omitempty"`
	StrictContent *bool    `json:"strict_content,omitempty"`
}

// RateLimit is a token bucket per caller uid: PerSecond requests on
// average, bursts of Burst. Zero PerSecond means no limit.
type RateLimit struct {
	PerSecond float64 `json:"per_second,omitempty"`
	Burst     int     `json:"burst,omitempty"`
}

// Duration is a time.Duration written as "720h" or "30d" in JSON.
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"720h\" or \"30d\"")
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// ParseDuration accepts Go durations and whole days ("30d").
func ParseDuration(s string) (time.Duration, error) {
	var days int
	if n, err := fmt.Sscanf(s, "%dd", &days); err == nil && n == 1 && fmt.Sprintf("%dd", days) == s {
		if days <= 0 {
			return 0, fmt.Errorf("duration %q is not positive", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (e.g. 720h or 30d)", s)
	}
	return d, nil
}

// labelsByRole are RFC 9420's labels for each role: the most a policy can
// allow.
var labelsByRole = map[keystore.Role][]string{
	keystore.RoleSignature:      mls.SignatureLabels,
	keystore.RoleLeafEncryption: {mls.LabelUpdatePathNode},
	keystore.RoleInit:           {mls.LabelWelcome},
}

// Check validates a policy: known roles, levels, labels within RFC
// 9420's for the role, known suites, sane numbers.
func (p *Policy) Check() error {
	for _, s := range p.AllowedSuites {
		if _, err := mls.LookupSuite(mls.CipherSuite(s)); err != nil {
			return fmt.Errorf("policy.allowed_suites: %d is not a supported suite", s)
		}
	}
	for role, level := range p.MinProtection {
		if !keystore.Role(role).Valid() {
			return fmt.Errorf("policy.min_protection: unknown role %q", role)
		}
		if keystore.Protection(level).Rank() == 0 {
			return fmt.Errorf("policy.min_protection.%s: unknown level %q", role, level)
		}
	}
	checkLabels := func(field string, role keystore.Role, labels []string) error {
		for _, l := range labels {
			if !slices.Contains(labelsByRole[role], l) {
				return fmt.Errorf("%s: %q is not an RFC 9420 label for %s keys (%v)", field, l, role, labelsByRole[role])
			}
		}
		return nil
	}
	for role, labels := range p.AllowedLabels {
		if !keystore.Role(role).Valid() {
			return fmt.Errorf("policy.allowed_labels: unknown role %q", role)
		}
		if err := checkLabels("policy.allowed_labels."+role, keystore.Role(role), labels); err != nil {
			return err
		}
	}
	for id, kp := range p.Keys {
		if err := checkKeyID("policy.keys", id); err != nil {
			return fmt.Errorf("policy.keys: %q is not a key id", id)
		}
		for _, l := range kp.AllowedLabels {
			if !slices.Contains(mls.SignatureLabels, l) && l != mls.LabelUpdatePathNode && l != mls.LabelWelcome {
				return fmt.Errorf("policy.keys.%s.allowed_labels: %q is not an RFC 9420 label", id, l)
			}
		}
	}
	if p.KeyPackageMaxLifetime != 0 && p.KeyPackageDefaultLifetime > p.KeyPackageMaxLifetime {
		return fmt.Errorf("policy: keypackage_default_lifetime %v is over keypackage_max_lifetime %v",
			time.Duration(p.KeyPackageDefaultLifetime), time.Duration(p.KeyPackageMaxLifetime))
	}
	if p.MaxOutstandingKeyPackages < 0 || p.MaxLastResortKeyPackages < 0 || p.RateLimit.PerSecond < 0 || p.RateLimit.Burst < 0 {
		return fmt.Errorf("policy: limits must not be negative")
	}
	return p.KeyPackageDefaults.check()
}

// KeystoreMinProtection converts MinProtection for keystore.Options.
func (p *Policy) KeystoreMinProtection() map[keystore.Role]keystore.Protection {
	out := map[keystore.Role]keystore.Protection{}
	for role, level := range p.MinProtection {
		out[keystore.Role(role)] = keystore.Protection(level)
	}
	return out
}

// DefaultMaxLastResort is the last-resort bound that comes with
// max_outstanding_keypackages: a client keeps one last-resort KeyPackage
// per cipher suite, and a few suites at most.
const DefaultMaxLastResort = 4

func (p *Policy) lastResortLimit() int {
	if p.MaxLastResortKeyPackages > 0 {
		return p.MaxLastResortKeyPackages
	}
	if p.MaxOutstandingKeyPackages > 0 {
		return DefaultMaxLastResort
	}
	return 0
}

func (p *Policy) suiteAllowed(s uint16) bool {
	return len(p.AllowedSuites) == 0 || slices.Contains(p.AllowedSuites, s)
}

// labelAllowed applies the role's list and then the key's own.
func (p *Policy) labelAllowed(r *keystore.Record, label string) bool {
	if l, ok := p.AllowedLabels[string(r.Role)]; ok && !slices.Contains(l, label) {
		return false
	}
	if k, ok := p.Keys[r.ID]; ok && k.AllowedLabels != nil && !slices.Contains(k.AllowedLabels, label) {
		return false
	}
	return true
}

func (p *Policy) strict(keyID string) bool {
	if k, ok := p.Keys[keyID]; ok && k.StrictContent != nil {
		return *k.StrictContent
	}
	return p.StrictContent == nil || *p.StrictContent
}

// limiter is a token bucket per uid.
type limiter struct {
	rate  RateLimit
	now   func() time.Time
	mu    sync.Mutex
	users map[uint32]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func (l *limiter) allow(uid uint32) bool {
	if l.rate.PerSecond <= 0 {
		return true
	}
	burst := float64(max(l.rate.Burst, 1))
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.users == nil {
		l.users = map[uint32]*bucket{}
	}
	now := l.now()
	b := l.users[uid]
	if b == nil {
		b = &bucket{tokens: burst, last: now}
		l.users[uid] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*l.rate.PerSecond)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// ownerLocks serialise KeyPackage creation per owner. A fixed set of
// stripes keeps memory bounded however many owners there are; two owners
// sharing a stripe only wait for each other.
type ownerLocks struct {
	stripes [64]chan struct{}
}

func newOwnerLocks() *ownerLocks {
	l := &ownerLocks{}
	for i := range l.stripes {
		l.stripes[i] = make(chan struct{}, 1)
	}
	return l
}

// lock waits for owner's stripe, or until ctx ends.
func (l *ownerLocks) lock(ctx context.Context, owner string) (func(), error) {
	h := fnv.New32a()
	h.Write([]byte(owner))
	c := l.stripes[h.Sum32()%uint32(len(l.stripes))]
	select {
	case c <- struct{}{}:
		return func() { <-c }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
