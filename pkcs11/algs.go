package pkcs11

import (
	"encoding/asn1"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// PKCS#11 3.0 constants that miekg/pkcs11 v1.1.2 does not define.
const (
	ckkECEdwards              = 0x40   // CKK_EC_EDWARDS
	ckkECMontgomery           = 0x41   // CKK_EC_MONTGOMERY
	ckmECEdwardsKeyPairGen    = 0x1055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmECMontgomeryKeyPairGen = 0x1056 // CKM_EC_MONTGOMERY_KEY_PAIR_GEN
	ckmEdDSA                  = 0x1057 // CKM_EDDSA
)

// Curve object identifiers (RFC 8410 and SEC 2).
var (
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidEd448   = asn1.ObjectIdentifier{1, 3, 101, 113}
	oidX25519  = asn1.ObjectIdentifier{1, 3, 101, 110}
	oidX448    = asn1.ObjectIdentifier{1, 3, 101, 111}
	oidP256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384    = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521    = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
)

// curveNames are the PrintableString forms of CKA_EC_PARAMS accepted when
// reading (SoftHSM stores the private half's parameters as a name even when
// it was given the OID).
var curveNames = map[string][]string{
	oidEd25519.String(): {"edwards25519", "ed25519"},
	oidEd448.String():   {"edwards448", "ed448"},
	oidX25519.String():  {"curve25519", "x25519"},
	oidX448.String():    {"curve448", "x448"},
	oidP256.String():    {"prime256v1", "secp256r1", "p-256"},
	oidP384.String():    {"secp384r1", "p-384"},
	oidP521.String():    {"secp521r1", "p-521"},
}

// X25519/X448 key-generation routes chosen by the probe at Open.
const (
	// RouteMontgomery is the PKCS#11 3.0 route: CKM_EC_MONTGOMERY_KEY_PAIR_GEN
	// with CKK_EC_MONTGOMERY.
	RouteMontgomery = "montgomery"
	// RouteEdwardsQuirk is SoftHSM 2.6's non-standard route:
	// CKM_EC_EDWARDS_KEY_PAIR_GEN with CKK_EC_EDWARDS and the curve25519 or
	// curve448 OID.
	RouteEdwardsQuirk = "edwards-quirk"
	// RouteStandard is the only route for the other algorithms.
	RouteStandard = "standard"
	// RouteNone means the algorithm is not available inside the device.
	RouteNone = "none"
)

// algSpec describes how one keystore.Algorithm maps onto PKCS#11.
type algSpec struct {
	alg     keystore.Algorithm
	sign    bool
	keyType uint // CKK_*
	genMech uint // key-pair generation mechanism
	opMech  uint // CKM_EDDSA, CKM_ECDSA or CKM_ECDH1_DERIVE
	oid     asn1.ObjectIdentifier
	pubLen  int  // MLS public key length
	outLen  int  // signature or shared-secret length
	nist    bool // pub is 04||X||Y
	route   string
}

func (s *algSpec) ecParams() []byte {
	b, err := asn1.Marshal(s.oid)
	if err != nil {
		panic(err) // constant OIDs always marshal
	}
	return b
}

// baseSpecs returns the static table. X25519/X448 keyType and genMech are
// placeholders until the probe picks a route.
func baseSpecs() map[keystore.Algorithm]*algSpec {
	return map[keystore.Algorithm]*algSpec{
		keystore.Ed25519:   {alg: keystore.Ed25519, sign: true, keyType: ckkECEdwards, genMech: ckmECEdwardsKeyPairGen, opMech: ckmEdDSA, oid: oidEd25519, pubLen: 32, outLen: 64},
		keystore.Ed448:     {alg: keystore.Ed448, sign: true, keyType: ckkECEdwards, genMech: ckmECEdwardsKeyPairGen, opMech: ckmEdDSA, oid: oidEd448, pubLen: 57, outLen: 114},
		keystore.ECDSAP256: {alg: keystore.ECDSAP256, sign: true, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDSA, oid: oidP256, pubLen: 65, outLen: 64, nist: true},
		keystore.ECDSAP384: {alg: keystore.ECDSAP384, sign: true, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDSA, oid: oidP384, pubLen: 97, outLen: 96, nist: true},
		keystore.ECDSAP521: {alg: keystore.ECDSAP521, sign: true, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDSA, oid: oidP521, pubLen: 133, outLen: 132, nist: true},
		keystore.X25519:    {alg: keystore.X25519, keyType: ckkECMontgomery, genMech: ckmECMontgomeryKeyPairGen, opMech: p11.CKM_ECDH1_DERIVE, oid: oidX25519, pubLen: 32, outLen: 32},
		keystore.X448:      {alg: keystore.X448, keyType: ckkECMontgomery, genMech: ckmECMontgomeryKeyPairGen, opMech: p11.CKM_ECDH1_DERIVE, oid: oidX448, pubLen: 56, outLen: 56},
		keystore.ECDHP256:  {alg: keystore.ECDHP256, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDH1_DERIVE, oid: oidP256, pubLen: 65, outLen: 32, nist: true},
		keystore.ECDHP384:  {alg: keystore.ECDHP384, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDH1_DERIVE, oid: oidP384, pubLen: 97, outLen: 48, nist: true},
		keystore.ECDHP521:  {alg: keystore.ECDHP521, keyType: p11.CKK_EC, genMech: p11.CKM_EC_KEY_PAIR_GEN, opMech: p11.CKM_ECDH1_DERIVE, oid: oidP521, pubLen: 133, outLen: 66, nist: true},
	}
}

// decodeECPoint turns CKA_EC_POINT into the MLS encoding: a DER OCTET
// STRING is unwrapped if it parses and has the expected length (asn1 handles
// the long-form length P-521 needs); otherwise the raw value is used if it
// has the expected length.
func decodeECPoint(b []byte, want int) ([]byte, bool) {
	var inner []byte
	if rest, err := asn1.Unmarshal(b, &inner); err == nil && len(rest) == 0 && len(inner) == want {
		return inner, true
	}
	if len(b) == want {
		return append([]byte(nil), b...), true
	}
	return nil, false
}

// ecParamsMatch reports whether a CKA_EC_PARAMS value (an OID, or a
// PrintableString curve name) names the curve oid.
func ecParamsMatch(b []byte, oid asn1.ObjectIdentifier) bool {
	var got asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(b, &got); err == nil && len(rest) == 0 {
		return got.Equal(oid)
	}
	var name string
	if rest, err := asn1.Unmarshal(b, &name); err == nil && len(rest) == 0 {
		for _, n := range curveNames[oid.String()] {
			if strings.EqualFold(name, n) {
				return true
			}
		}
	}
	return false
}

// keyTypes are the CKA_KEY_TYPE values a private key of this algorithm may
// have: X25519/X448 keys made under either route stay usable.
func (s *algSpec) keyTypes() []uint {
	if s.alg == keystore.X25519 || s.alg == keystore.X448 {
		return []uint{ckkECMontgomery, ckkECEdwards}
	}
	return []uint{s.keyType}
}
