package mls

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// The fuzz targets check that decoders never panic, that every failure
// wraps ErrMalformed (or a framing sentinel), and that anything accepted
// re-encodes to exactly the input: the encoding is canonical, so a second
// decode cannot differ.

func seedFromVectors(f *testing.F, pick func(messagesSubset) []byte) {
	for i, v := range loadMessages(f) {
		if i%10 == 0 {
			f.Add(pick(v))
		}
	}
}

func FuzzUnmarshalKeyPackage(f *testing.F) {
	seedFromVectors(f, func(v messagesSubset) []byte { return v.KeyPackage[4:] })
	var wv []welcomeVector
	loadJSON(f, "welcome.json", &wv)
	for _, v := range wv {
		f.Add([]byte(v.KeyPackage[4:]))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		kp, err := UnmarshalKeyPackage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		enc := kp.Marshal()
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, enc)
		}
		kp2, err := UnmarshalKeyPackage(enc)
		if err != nil || !bytes.Equal(kp2.Marshal(), enc) {
			t.Fatalf("second decode: %v", err)
		}
		_ = kp.Verify(time.Time{}) // must not panic on arbitrary content
	})
}

func FuzzUnmarshalWelcome(f *testing.F) {
	seedFromVectors(f, func(v messagesSubset) []byte { return v.Welcome })
	seedFromVectors(f, func(v messagesSubset) []byte { return v.GroupInfo })
	var wv []welcomeVector
	loadJSON(f, "welcome.json", &wv)
	for _, v := range wv {
		f.Add([]byte(v.Welcome))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalMLSMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedWireFormat) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		enc := m.Marshal()
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, enc)
		}
		m2, err := UnmarshalMLSMessage(enc)
		if err != nil || !bytes.Equal(m2.Marshal(), enc) {
			t.Fatalf("second decode: %v", err)
		}
		if m.Welcome != nil {
			s, err := LookupSuite(m.Welcome.CipherSuite)
			if err == nil && len(m.Welcome.Secrets) > 0 {
				// Decryption of garbage must fail cleanly, never panic.
				gs := &GroupSecrets{JoinerSecret: make([]byte, s.HashSize())}
				_, _ = s.DecryptGroupInfo(m.Welcome, gs, nil)
			}
		}
	})
}

func FuzzUnmarshalGroupSecrets(f *testing.F) {
	seedFromVectors(f, func(v messagesSubset) []byte { return v.GroupSecrets })
	f.Add([]byte{0x01, 0x00, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		gs, err := UnmarshalGroupSecrets(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		enc := gs.Marshal()
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, enc)
		}
		gs2, err := UnmarshalGroupSecrets(enc)
		if err != nil || !bytes.Equal(gs2.Marshal(), enc) {
			t.Fatalf("second decode: %v", err)
		}
	})
}
