package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// TestSignPWVerifies: the hand-marshalled TPM2_Sign gives signatures that
// verify, on both curves, and a TPM error comes back as go-tpm's TPMRC.
func TestSignPWVerifies(t *testing.T) {
	for _, env := range []*tpmEnv{simEnv(t), swtpmEnv(t)} {
		b := env.open(t)
		ctx := context.Background()
		for _, tc := range []struct {
			alg   keystore.Algorithm
			curve elliptic.Curve
		}{{keystore.ECDSAP256, elliptic.P256()}, {keystore.ECDSAP384, elliptic.P384()}} {
			ref, pub, err := b.Generate(ctx, "k", tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			x, y := elliptic.Unmarshal(tc.curve, pub)
			if x == nil {
				t.Fatalf("%s: public key is not an uncompressed point", tc.alg)
			}
			pk := &ecdsa.PublicKey{Curve: tc.curve, X: x, Y: y}
			for i := range 3 {
				d := digestFor(tc.alg, string(rune('a'+i)))
				sig, err := b.Sign(ctx, ref, tc.alg, d)
				if err != nil {
					t.Fatalf("%s %s: %v", env.name, tc.alg, err)
				}
				n := len(sig) / 2
				if !ecdsa.Verify(pk, d, new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])) {
					t.Fatalf("%s %s: signature does not verify", env.name, tc.alg)
				}
			}
		}
		// No object at this handle: the TPM's code, as go-tpm returns it.
		err := b.do(ctx, "test", func() error {
			_, _, err := signPW(b.tpm, 0x80fffffe, make([]byte, 32), tpm2.TPMAlgSHA256)
			return err
		})
		var rc tpm2.TPMRC
		if !errors.As(err, &rc) {
			t.Fatalf("%s: sign with no key: %v, want a TPMRC", env.name, err)
		}
	}
}

// TestParseSignResponseRefusesMalformed: truncated, oversized or wrong
// responses give errors, never a panic or a short signature.
func TestParseSignResponseRefusesMalformed(t *testing.T) {
	good := func() []byte { return signResponse(make([]byte, 32), make([]byte, 32)) }
	if r, s, err := parseSignResponse(good(), tpm2.TPMAlgSHA256); err != nil || len(r) != 32 || len(s) != 32 {
		t.Fatalf("well-formed response: %d %d %v", len(r), len(s), err)
	}
	if _, _, err := parseSignResponse(good(), tpm2.TPMAlgSHA384); err == nil {
		t.Fatal("a signature with another hash was accepted")
	}
	g := good()
	for n := range len(g) {
		cut := append([]byte(nil), g[:n]...)
		if len(cut) >= 6 {
			binary.BigEndian.PutUint32(cut[2:6], uint32(n))
		}
		if _, _, err := parseSignResponse(cut, tpm2.TPMAlgSHA256); err == nil && n < 10+4+4+2*34 {
			t.Fatalf("response cut to %d bytes accepted", n)
		}
	}
	big := good()
	binary.BigEndian.PutUint32(big[10:14], 1<<31)
	if _, _, err := parseSignResponse(big, tpm2.TPMAlgSHA256); err == nil {
		t.Fatal("a parameter size past the response was accepted")
	}
}

// signResponse is a well-formed TPM2_Sign response: success, an ECDSA
// signature (SHA-256) of r and s, the password session's acknowledgement.
func signResponse(r, s []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	parms := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgECDSA))
	parms = binary.BigEndian.AppendUint16(parms, uint16(tpm2.TPMAlgSHA256))
	for _, v := range [][]byte{r, s} {
		parms = binary.BigEndian.AppendUint16(parms, uint16(len(v)))
		parms = append(parms, v...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(parms)))
	b = append(b, parms...)
	b = append(b, 0, 0, 1, 0, 0)
	binary.BigEndian.PutUint32(b[2:6], uint32(len(b)))
	return b
}

// FuzzParseSignResponse: whatever a TPM (or whatever sits on its
// transport) answers, the parser returns an error or r and s that lie
// inside the response, never panics or reads past it.
func FuzzParseSignResponse(f *testing.F) {
	b := signResponse(bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 32))
	f.Add(b)
	f.Add(b[:20])
	f.Fuzz(func(t *testing.T, rsp []byte) {
		r, s, err := parseSignResponse(rsp, tpm2.TPMAlgSHA256)
		if err != nil {
			return
		}
		if len(r)+len(s)+4+4+4+10 > len(rsp) {
			t.Fatalf("r (%d bytes) and s (%d) do not fit a %d-byte response", len(r), len(s), len(rsp))
		}
	})
}
