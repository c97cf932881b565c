package mls

import (
	"testing"
	"time"
)

func TestGreaseValues(t *testing.T) {
	g := GreaseValues()
	if len(g) != 15 || g[0] != 0x0A0A || g[14] != 0xEAEA {
		t.Fatalf("GreaseValues = %x", g)
	}
	n := 0
	for v := 0; v <= 0xffff; v++ {
		if IsGrease(uint16(v)) {
			n++
			if !contains(g, uint16(v)) {
				t.Errorf("IsGrease(%#04x) but not in the list", v)
			}
		}
	}
	if n != 15 {
		t.Errorf("IsGrease holds for %d values, want 15", n)
	}
	for _, v := range []uint16{0xFAFA, 0x0A1A, 0x0B0B, 0x000A, 1, 2} {
		if IsGrease(v) {
			t.Errorf("IsGrease(%#04x)", v)
		}
	}
}

// A KeyPackage whose capabilities carry GREASE values is built, verifies,
// and decodes back to the same capabilities: GREASE is carried, not
// interpreted.
func TestKeyPackageWithGrease(t *testing.T) {
	for _, s := range Suites() {
		p, signer, _, _ := testParams(t, s)
		p.Capabilities = AddGrease(Capabilities{Credentials: []uint16{CredentialTypeX509}})
		if p.Capabilities = AddGrease(p.Capabilities); len(p.Capabilities.Credentials) != 2 || len(p.Capabilities.Extensions) != 1 || len(p.Capabilities.Proposals) != 1 {
			t.Fatalf("AddGrease twice: %+v", p.Capabilities)
		}
		kp, err := NewKeyPackage(p, signer)
		if err != nil {
			t.Fatalf("%s: NewKeyPackage: %v", s.Name, err)
		}
		back, err := UnmarshalKeyPackage(kp.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if err := back.Verify(time.Now()); err != nil {
			t.Fatalf("%s: Verify: %v", s.Name, err)
		}
		c := back.LeafNode.Capabilities
		for _, list := range [][]uint16{c.Credentials, c.Extensions, c.Proposals} {
			grease := 0
			for _, v := range list {
				if IsGrease(v) {
					grease++
				}
			}
			if grease != 1 {
				t.Errorf("%s: capabilities %+v: want one GREASE value per list", s.Name, c)
			}
		}
	}
}
