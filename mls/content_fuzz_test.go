package mls

import (
	"bytes"
	"errors"
	"testing"
)

// Fuzz targets for the strict-content parsers: no panics, every failure
// wraps ErrMalformed, and accepted input re-encodes to exactly itself, so
// a second decode is stable.

func fuzzTBS(f *testing.F, seeds [][]byte, parse func([]byte) ([]byte, error)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		enc, err := parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, enc)
		}
		enc2, err := parse(enc)
		if err != nil || !bytes.Equal(enc2, enc) {
			t.Fatalf("second decode: %v", err)
		}
	})
}

func FuzzParseFramedContentTBS(f *testing.F) {
	framed, _, _, _ := tbsSamples(f, 10)
	var vs []protectionVector
	loadJSON(f, "message-protection.json", &vs)
	for _, v := range vs {
		for _, msg := range [][]byte{v.ProposalPub, v.CommitPub} {
			if pm, err := parsePublicMessage(msg); err == nil {
				framed = append(framed, append([]byte{0, 1, 0, 2}, pm.content...))
			}
		}
	}
	framed = append(framed, framedTBS(ContentTypeProposal, []byte{0, 3, 0, 0, 0, 1}))
	fuzzTBS(f, framed, func(b []byte) ([]byte, error) {
		t, err := ParseFramedContentTBS(b)
		if err != nil {
			return nil, err
		}
		return t.Marshal(), nil
	})
}

func FuzzParseLeafNodeTBS(f *testing.F) {
	_, leaf, _, _ := tbsSamples(f, 10)
	fuzzTBS(f, leaf, func(b []byte) ([]byte, error) {
		t, err := UnmarshalLeafNodeTBS(b)
		if err != nil {
			return nil, err
		}
		ln, err := ParseLeafNodeTBS(b)
		if err != nil || !bytes.Equal(ln.TBS(t.GroupID, t.LeafIndex), t.Marshal()) {
			panic("ParseLeafNodeTBS disagrees with UnmarshalLeafNodeTBS")
		}
		return t.Marshal(), nil
	})
}

func FuzzParseKeyPackageTBS(f *testing.F) {
	_, _, kp, _ := tbsSamples(f, 10)
	fuzzTBS(f, kp, func(b []byte) ([]byte, error) {
		k, err := ParseKeyPackageTBS(b)
		if err != nil {
			return nil, err
		}
		return k.TBS(), nil
	})
}

func FuzzParseGroupInfoTBS(f *testing.F) {
	_, _, _, gi := tbsSamples(f, 10)
	fuzzTBS(f, gi, func(b []byte) ([]byte, error) {
		g, err := ParseGroupInfoTBS(b)
		if err != nil {
			return nil, err
		}
		return g.TBS(), nil
	})
}
