package metrics

import (
	"context"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Backend returns be with every device operation counted, timed and its
// errors sorted by kind. The result has exactly the optional capabilities
// (Lister, Sealer, Checker, Attester, CredentialActivator) be has, since
// the keystore decides what it can do by asking for them; a capability
// added to keystore must be added here too (TestBackendKeepsCapabilities
// lists them).
func (m *Metrics) Backend(be keystore.Backend) keystore.Backend {
	d := &device{be: be, m: m}
	mask := 0
	if _, ok := be.(keystore.Lister); ok {
		mask |= capLister
	}
	if _, ok := be.(keystore.Sealer); ok {
		mask |= capSealer
	}
	if _, ok := be.(keystore.Checker); ok {
		mask |= capChecker
	}
	if _, ok := be.(keystore.Attester); ok {
		mask |= capAttester
	}
	if _, ok := be.(keystore.CredentialActivator); ok {
		mask |= capActivator
	}
	return withCaps[mask](d)
}

const (
	capLister = 1 << iota
	capSealer
	capChecker
	capAttester
	capActivator
)

// device is the Backend part; the capability parts below add one optional
// interface each and are combined in capabilities.go.
type device struct {
	be keystore.Backend
	m  *Metrics
}

// Unwrap returns the device itself.
func (d *device) Unwrap() keystore.Backend { return d.be }

func (d *device) Info() keystore.DeviceInfo        { return d.be.Info() }
func (d *device) Algorithms() []keystore.Algorithm { return d.be.Algorithms() }
func (d *device) Close() error                     { return d.be.Close() }

func (d *device) Generate(ctx context.Context, id string, alg keystore.Algorithm) ([]byte, []byte, error) {
	start := time.Now()
	ref, pub, err := d.be.Generate(ctx, id, alg)
	d.m.deviceOp("generate", start, err)
	return ref, pub, err
}

func (d *device) Sign(ctx context.Context, ref []byte, alg keystore.Algorithm, msg []byte) ([]byte, error) {
	start := time.Now()
	sig, err := d.be.Sign(ctx, ref, alg, msg)
	d.m.deviceOp("sign", start, err)
	return sig, err
}

func (d *device) ECDH(ctx context.Context, ref []byte, alg keystore.Algorithm, peer []byte) ([]byte, error) {
	start := time.Now()
	z, err := d.be.ECDH(ctx, ref, alg, peer)
	d.m.deviceOp("ecdh", start, err)
	return z, err
}

func (d *device) Destroy(ctx context.Context, ref []byte) error {
	start := time.Now()
	err := d.be.Destroy(ctx, ref)
	d.m.deviceOp("destroy", start, err)
	return err
}

type lister struct{ *device }

func (d lister) List(ctx context.Context) ([]keystore.DeviceKey, error) {
	start := time.Now()
	keys, err := d.be.(keystore.Lister).List(ctx)
	d.m.deviceOp("list", start, err)
	return keys, err
}

type sealer struct{ *device }

func (d sealer) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	start := time.Now()
	blob, err := d.be.(keystore.Sealer).Seal(ctx, plaintext, aad)
	d.m.deviceOp("seal", start, err)
	return blob, err
}

func (d sealer) Unseal(ctx context.Context, blob, aad []byte) ([]byte, error) {
	start := time.Now()
	pt, err := d.be.(keystore.Sealer).Unseal(ctx, blob, aad)
	d.m.deviceOp("unseal", start, err)
	return pt, err
}

type checker struct{ *device }

func (d checker) Check(ctx context.Context, ref []byte, alg keystore.Algorithm) error {
	start := time.Now()
	err := d.be.(keystore.Checker).Check(ctx, ref, alg)
	d.m.deviceOp("check", start, err)
	return err
}

type attester struct{ *device }

func (d attester) Attest(ctx context.Context, ref []byte, alg keystore.Algorithm, nonce []byte) (*keystore.Attestation, error) {
	start := time.Now()
	a, err := d.be.(keystore.Attester).Attest(ctx, ref, alg, nonce)
	d.m.deviceOp("attest", start, err)
	return a, err
}

type activator struct{ *device }

func (d activator) ActivateCredential(ctx context.Context, endorsementKey, credentialBlob, secret []byte) ([]byte, error) {
	start := time.Now()
	out, err := d.be.(keystore.CredentialActivator).ActivateCredential(ctx, endorsementKey, credentialBlob, secret)
	d.m.deviceOp("activate_credential", start, err)
	return out, err
}
