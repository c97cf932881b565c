package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// countSessionObjects counts the session objects any session of b sees.
func countSessionObjects(t *testing.T, b *Backend) int {
	t.Helper()
	var n int
	err := b.withSession(context.Background(), "test", func(s p11.SessionHandle) error {
		hs, err := b.findAll(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
		n = len(hs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGenWrapDirectMatchesMiekg: the one-call sequence reads the point
// miekg/pkcs11 reads and gives the blob miekg/pkcs11's C_WrapKey gives for
// the same key (AES-KWP is deterministic), and the blob unwraps to that
// key (ECDHWrapped checks it against the public key and derives).
func TestGenWrapDirectMatchesMiekg(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	if err := b.NewEpoch(ctx, "gw"); err != nil {
		t.Fatal(err)
	}
	sessionObjs := countSessionObjects(t, b)
	for _, alg := range []keystore.Algorithm{keystore.ECDHP256, keystore.ECDHP384, keystore.ECDHP521} {
		if _, _, err := b.GenerateWrapped(ctx, "gw", "first", alg); err != nil {
			t.Fatal(err) // makes the epoch's wrapping key
		}
		spec, trusted, err := b.wrapSpec(alg)
		if err != nil {
			t.Fatal(err)
		}
		var pub, blob []byte
		err = b.withWrapKey(ctx, "test", "gw", func(s p11.SessionHandle, wh p11.ObjectHandle) (err error) {
			pt, kt := b.wrappableTemplates(spec, "k-"+string(alg), trusted)
			r, ok := b.genWrapDirect(s, spec.genMech, wh, pt, kt, true)
			if !ok {
				t.Fatal("no direct calls into SoftHSM")
			}
			if r.err != nil || !r.generated || r.destroyed || r.wrapped == nil {
				t.Fatalf("direct: %+v", r)
			}
			defer b.destroySession(s, &err, r.privH, r.pubH)
			attrs, err := b.mod.ctx.GetAttributeValue(s, r.pubH, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
			if err != nil {
				return err
			}
			if !bytes.Equal(attrs[0].Value, r.point) {
				t.Errorf("%s: point %x, miekg reads %x", alg, r.point, attrs[0].Value)
			}
			w, err := b.mod.ctx.WrapKey(s, wrapMech(), wh, r.privH)
			if err != nil {
				return err
			}
			if !bytes.Equal(w, r.wrapped) {
				t.Errorf("%s: one-call blob differs from miekg's (%d and %d bytes)", alg, len(r.wrapped), len(w))
			}
			p, ok := decodeECPoint(r.point, spec.pubLen)
			if !ok {
				t.Fatalf("%s: bad point %x", alg, r.point)
			}
			pub, blob = p, append(wrapHeader("gw"), r.wrapped...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		curve := map[keystore.Algorithm]ecdh.Curve{keystore.ECDHP256: ecdh.P256(), keystore.ECDHP384: ecdh.P384(), keystore.ECDHP521: ecdh.P521()}[alg]
		peer, _ := curve.GenerateKey(rand.Reader)
		pk, err := curve.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := peer.ECDH(pk)
		z, err := b.ECDHWrapped(ctx, blob, "k-"+string(alg), alg, pub, peer.PublicKey().Bytes())
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if !bytes.Equal(z, want) {
			t.Errorf("%s: the one-call blob's key derives another secret", alg)
		}
	}
	if n := countSessionObjects(t, b); n != sessionObjs {
		t.Errorf("session objects: %d before, %d after", sessionObjs, n)
	}
}

// TestGenerateWrappedSmallBuffers: when the point or the blob does not fit
// the room the one-call sequence gives it (the module answers
// CKR_BUFFER_TOO_SMALL), GenerateWrapped finishes the ordinary way, and
// the key works and leaves nothing behind.
func TestGenerateWrappedSmallBuffers(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	if err := b.NewEpoch(ctx, "gw"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.GenerateWrapped(ctx, "gw", "first", keystore.ECDHP256); err != nil {
		t.Fatal(err)
	}
	before, sessionObjs := countObjects(t, b), countSessionObjects(t, b)
	defer func(p, w int) { genWrapPointCap, genWrapBlobCap = p, w }(genWrapPointCap, genWrapBlobCap)
	for _, tc := range []struct {
		name        string
		point, blob int
	}{{"blob", 256, 8}, {"point", 8, 1024}, {"both", 0, 0}} {
		genWrapPointCap, genWrapBlobCap = tc.point, tc.blob
		id := "k-" + tc.name
		// The one-call sequence stops at the step that does not fit,
		// with both objects alive.
		spec, trusted, err := b.wrapSpec(keystore.ECDHP256)
		if err != nil {
			t.Fatal(err)
		}
		err = b.withWrapKey(ctx, "test", "gw", func(s p11.SessionHandle, wh p11.ObjectHandle) (err error) {
			pt, kt := b.wrappableTemplates(spec, id, trusted)
			r, _ := b.genWrapDirect(s, spec.genMech, wh, pt, kt, false)
			if r.err != nil || !r.generated || r.destroyed || r.wrapped != nil || (r.point == nil) != (tc.point < 256) {
				t.Errorf("%s too small: %+v", tc.name, r)
			}
			if r.generated && !r.destroyed {
				b.destroySession(s, &err, r.privH, r.pubH)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		blob, pub, err := b.GenerateWrapped(ctx, "gw", id, keystore.ECDHP256)
		if err != nil {
			t.Fatalf("%s too small: %v", tc.name, err)
		}
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		pk, err := ecdh.P256().NewPublicKey(pub)
		if err != nil {
			t.Fatalf("%s too small: public key: %v", tc.name, err)
		}
		want, _ := peer.ECDH(pk)
		z, err := b.ECDHWrapped(ctx, blob, id, keystore.ECDHP256, pub, peer.PublicKey().Bytes())
		if err != nil || !bytes.Equal(z, want) {
			t.Errorf("%s too small: ECDH with the blob: %v (equal %v)", tc.name, err, bytes.Equal(z, want))
		}
		if n := countSessionObjects(t, b); n != sessionObjs {
			t.Errorf("%s too small: session objects: %d before, %d after", tc.name, sessionObjs, n)
		}
	}
	if after := countObjects(t, b); after != before {
		t.Errorf("token objects: %d before, %d after", before, after)
	}
}
