package mls

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestDeserializationVectors(t *testing.T) {
	var vs []struct {
		Header hexBytes `json:"vlbytes_header"`
		Length uint64   `json:"length"`
	}
	loadJSON(t, "deserialization.json", &vs)
	if len(vs) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vs {
		got, n, err := ReadVarint(v.Header)
		if err != nil || got != v.Length || n != len(v.Header) {
			t.Errorf("ReadVarint(%x) = %d, %d, %v; want %d", v.Header, got, n, err, v.Length)
		}
		enc, err := AppendVarint(nil, v.Length)
		if err != nil || !bytes.Equal(enc, v.Header) {
			t.Errorf("AppendVarint(%d) = %x, %v; want %x", v.Length, enc, err, v.Header)
		}
		// The header alone announces v.Length bytes that are not there.
		if v.Length > 0 {
			if _, err := NewReader(v.Header).Vector(); !errors.Is(err, ErrMalformed) {
				t.Errorf("Vector over header %x alone: %v", v.Header, err)
			}
		}
	}
}

func TestVarintRules(t *testing.T) {
	bad := []string{"", "40", "4000", "403f", "80", "80000000", "80003fff", "c0", "ff", "c000000000000000"}
	for _, h := range bad {
		b := mustHex(t, h)
		if _, _, err := ReadVarint(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("ReadVarint(%s) = %v, want ErrMalformed", h, err)
		}
	}
	for _, v := range []uint64{0, 63, 64, 16383, 16384, MaxVarint} {
		b, err := AppendVarint(nil, v)
		if err != nil {
			t.Fatal(err)
		}
		got, n, err := ReadVarint(b)
		if err != nil || got != v || n != len(b) {
			t.Errorf("round trip %d: %d %d %v", v, got, n, err)
		}
	}
	if _, err := AppendVarint(nil, MaxVarint+1); !errors.Is(err, ErrMalformed) {
		t.Error("AppendVarint(2^30) succeeded")
	}
	w := NewWriter()
	w.Vector(make([]byte, MaxVarint+1))
	if w.Err() == nil {
		t.Error("Writer accepted a 1 GiB vector")
	}
}

func TestReader(t *testing.T) {
	r := NewReader(mustHex(t, "01 0203 04050607 08090a0b0c0d0e0f 03aabbcc 01 02"))
	u8, _ := r.U8()
	u16, _ := r.U16()
	u32, _ := r.U32()
	u64, _ := r.U64()
	vec, _ := r.Vector()
	opt, err := r.Optional()
	if u8 != 1 || u16 != 0x0203 || u32 != 0x04050607 || u64 != 0x08090a0b0c0d0e0f || !bytes.Equal(vec, []byte{0xaa, 0xbb, 0xcc}) || !opt || err != nil {
		t.Fatalf("decoded %x %x %x %x %x %v %v", u8, u16, u32, u64, vec, opt, err)
	}
	if _, err := r.Optional(); !errors.Is(err, ErrMalformed) {
		t.Errorf("optional byte 2: %v", err)
	}
	if !r.Empty() || r.Finish() != nil {
		t.Error("reader should be exhausted")
	}
	if _, err := r.U8(); !errors.Is(err, ErrMalformed) {
		t.Errorf("read past end: %v", err)
	}
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	var h hexBytes
	if err := h.UnmarshalJSON([]byte(`"` + string(bytes.ReplaceAll([]byte(s), []byte(" "), nil)) + `"`)); err != nil {
		t.Fatal(err)
	}
	return h
}

// A decode error is one line with one "mls:" prefix, names the field and
// still matches its sentinel.
func TestDecodeErrorSaysMLSOnce(t *testing.T) {
	_, err := UnmarshalKeyPackage([]byte{0, 1, 0, 1, 2})
	if err == nil {
		t.Fatal("decoded a truncated KeyPackage")
	}
	msg := err.Error()
	if strings.Count(msg, "mls:") != 1 || !strings.Contains(msg, "KeyPackage.init_key") {
		t.Errorf("error %q: want one \"mls:\" and the field", msg)
	}
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("error %q does not match ErrMalformed", msg)
	}
}
