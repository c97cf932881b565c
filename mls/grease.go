package mls

import "math/rand/v2"

// RFC 9420 §13.5 reserves fifteen GREASE values, 0x0A0A to 0xEAEA, in every
// registry. Implementations add random ones to their capabilities so that
// peers that choke on unknown values are found early; a receiver ignores
// them.

// IsGrease reports whether v is one of the GREASE values.
func IsGrease(v uint16) bool {
	return v&0x0F0F == 0x0A0A && v>>12 == (v>>4)&0xF && v>>12 <= 0xE
}

// GreaseValues returns the fifteen GREASE values in order.
func GreaseValues() []uint16 {
	out := make([]uint16, 0, 15)
	for i := uint16(0); i < 15; i++ {
		out = append(out, 0x0A0A+0x1010*i)
	}
	return out
}

// randomGrease picks one GREASE value not yet in list. The choice needs no
// secrecy, only variety across KeyPackages.
func randomGrease(list []uint16) uint16 {
	for {
		v := 0x0A0A + 0x1010*uint16(rand.IntN(15))
		if !contains(list, v) {
			return v
		}
	}
}

// AddGrease adds one random GREASE value to the credentials, extensions
// and proposals of c that hold none yet, as other engines do.
func AddGrease(c Capabilities) Capabilities {
	add := func(list []uint16) []uint16 {
		for _, v := range list {
			if IsGrease(v) {
				return list
			}
		}
		return append(append([]uint16(nil), list...), randomGrease(list))
	}
	c.Credentials = add(c.Credentials)
	c.Extensions = add(c.Extensions)
	c.Proposals = add(c.Proposals)
	return c
}
