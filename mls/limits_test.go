package mls

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

// welcomeOf builds a Welcome message of n entries with the given sizes.
func welcomeOf(suite CipherSuite, n, refSize, kemSize, ctSize int) []byte {
	w := &Welcome{CipherSuite: suite, EncryptedGroupInfo: []byte{1}}
	e := EncryptedGroupSecrets{NewMember: make([]byte, refSize), KEMOutput: make([]byte, kemSize), Ciphertext: make([]byte, ctSize)}
	for range n {
		w.Secrets = append(w.Secrets, e)
	}
	return WelcomeMessage(w)
}

func TestDecodeLimits(t *testing.T) {
	s := mustSuite(t, 1)
	nh, nenc := s.HashSize(), s.KEMOutputSize()
	cases := map[string]struct {
		msg  []byte
		want string
	}{
		// 4 MiB of empty entries: refused at the first entry, not after
		// decoding 1.4 million of them.
		"empty entries":      {welcomeOf(1, (4<<20)/3, 0, 0, 0), "new_member: malformed encoding: 0 bytes, want 32"},
		"short kem_output":   {welcomeOf(1, 2, nh, nenc-1, 16), "kem_output"},
		"too many entries":   {welcomeOf(1, MaxWelcomeSecrets+1, nh, nenc, 0), "more than 10000 entries"},
		"unknown suite, cap": {welcomeOf(0x7777, MaxWelcomeSecrets+1, 0, 0, 0), "more than 10000 entries"},
	}
	for name, c := range cases {
		_, err := UnmarshalMLSMessage(c.msg)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrMalformed with %q", name, err, c.want)
		}
	}
	if m, err := UnmarshalMLSMessage(welcomeOf(1, MaxWelcomeSecrets, nh, nenc, 0)); err != nil || len(m.Welcome.Secrets) != MaxWelcomeSecrets {
		t.Fatalf("Welcome at the limit: %v", err)
	}

	// Capabilities and extension lists.
	p, signer, _, _ := testParams(t, s)
	kp, err := NewKeyPackage(p, signer)
	if err != nil {
		t.Fatal(err)
	}
	big := *kp
	big.LeafNode.Capabilities.Proposals = make([]uint16, MaxCapabilityEntries+1)
	if _, err := UnmarshalKeyPackage(big.Marshal()); err == nil || !strings.Contains(err.Error(), "Capabilities.proposals") {
		t.Errorf("capabilities over the limit: %v", err)
	}
	big = *kp
	for i := range MaxExtensions + 1 {
		big.Extensions = append(big.Extensions, Extension{Type: uint16(0x1000 + i)})
	}
	if _, err := UnmarshalKeyPackage(big.Marshal()); err == nil || !strings.Contains(err.Error(), "KeyPackage.extensions") {
		t.Errorf("extensions over the limit: %v", err)
	}
	// NewKeyPackage builds nothing it could not decode again.
	q := p
	for i := range MaxExtensions + 1 {
		q.LeafExtensions = append(q.LeafExtensions, Extension{Type: uint16(0x1000 + i), Data: []byte{}})
	}
	if _, err := NewKeyPackage(q, signer); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("NewKeyPackage over the extension limit: %v", err)
	}
}

// TestManyExtensionsLinear builds and verifies a KeyPackage with the most
// extensions the limits allow; the look-ups are set-based, so this costs
// milliseconds (65,000 types took 4.6 s per KeyPackage with list scans).
func TestManyExtensionsLinear(t *testing.T) {
	s := mustSuite(t, 1)
	p, signer, _, _ := testParams(t, s)
	for i := range MaxExtensions - 1 {
		p.LeafExtensions = append(p.LeafExtensions, Extension{Type: uint16(0x1000 + i), Data: []byte{}})
		p.Capabilities.Extensions = append(p.Capabilities.Extensions, uint16(0x1000+i))
	}
	kp, err := NewKeyPackage(p, signer)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(kp.LeafNode.Capabilities.Extensions); n != MaxExtensions-1 {
		t.Fatalf("capabilities list %d extension types, want %d", n, MaxExtensions-1)
	}
	dec, err := UnmarshalKeyPackage(kp.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if err := dec.Verify(time.Time{}); err != nil {
		t.Fatal(err)
	}
}

// decodeBudget is the documented bound on what decoding any input costs:
// at most decodeBytesPerInputByte bytes allocated per input byte (each
// decoded byte is copied once, plus slack) and decodeConstBytes for the
// structures of the longest list the limits allow (10,000 Welcome entries
// of 72 bytes each, grown by doubling). Without the limits a 4 MiB Welcome
// allocated 589 MiB.
const (
	decodeBytesPerInputByte = 4
	decodeConstBytes        = 4 << 20
)

func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestDecodeCostBounded is the property test: for adversarial shapes and
// random inputs under the 4 MiB Welcome limit, the bytes allocated by
// UnmarshalMLSMessage stay within decodeBudget.
func TestDecodeCostBounded(t *testing.T) {
	s := mustSuite(t, 1)
	nh, nenc := s.HashSize(), s.KEMOutputSize()
	inputs := map[string][]byte{
		"empty entries":     welcomeOf(1, (4<<20)/3, 0, 0, 0),
		"max valid entries": welcomeOf(1, MaxWelcomeSecrets, nh, nenc, 0),
		"unknown suite":     welcomeOf(0x7777, MaxWelcomeSecrets, 0, 0, 0),
		"one big entry":     welcomeOf(1, 1, nh, nenc, 4<<20-200),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := welcomeOf(1, 3, nh, nenc, 40)
	for i := range 200 {
		m := bytes.Clone(base)
		for range 1 + rng.IntN(8) {
			m[rng.IntN(len(m))] = byte(rng.Uint32())
		}
		inputs["mutated "+string(rune('a'+i%26))+string(rune('a'+i/26))] = m
	}
	for name, in := range inputs {
		got := allocated(func() { _, _ = UnmarshalMLSMessage(in) })
		budget := uint64(decodeBytesPerInputByte*len(in) + decodeConstBytes)
		if got > budget {
			t.Errorf("%s: %d input bytes allocated %d bytes, over the budget of %d", name, len(in), got, budget)
		}
	}
	// And the number of allocations is bounded by the entry limit, not by
	// the input size.
	in := welcomeOf(1, MaxWelcomeSecrets, nh, nenc, 0)
	if n := testing.AllocsPerRun(3, func() { _, _ = UnmarshalMLSMessage(in) }); n > 3*MaxWelcomeSecrets+64 {
		t.Errorf("%v allocations for %d entries", n, MaxWelcomeSecrets)
	}
}
