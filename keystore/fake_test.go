package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sync"
)

// fakeBackend is an in-memory device for unit tests of the core only: the
// device tests run against SoftHSM in pkcs11/. It keeps software keys and
// can be told to fail or to support only some algorithms.
type fakeBackend struct {
	mu       sync.Mutex
	keys     map[string]fakeKey // by id
	algs     []Algorithm
	sealKey  cipher.AEAD
	failGen  error
	ecdhCall int
	marker   string // installation marker (Binder)
}

func (f *fakeBackend) Binding(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.marker, nil
}

func (f *fakeBackend) Bind(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.marker != "" && f.marker != id {
		return errors.New("device belongs to another installation")
	}
	f.marker = id
	return nil
}

type fakeKey struct {
	alg  Algorithm
	priv []byte
}

func newFake(algs ...Algorithm) *fakeBackend {
	if algs == nil {
		algs = Algorithms
	}
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	g, _ := cipher.NewGCM(b)
	return &fakeBackend{keys: map[string]fakeKey{}, algs: algs, sealKey: g}
}

func (f *fakeBackend) Info() DeviceInfo        { return DeviceInfo{Backend: "fake", Device: "memory"} }
func (f *fakeBackend) Algorithms() []Algorithm { return f.algs }
func (f *fakeBackend) Close() error            { return nil }

func (f *fakeBackend) Generate(_ context.Context, id string, alg Algorithm) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failGen != nil {
		return nil, nil, f.failGen
	}
	priv, pub, err := softGenerate(alg)
	if err != nil {
		return nil, nil, err
	}
	f.keys[id] = fakeKey{alg, priv}
	return []byte(id), pub, nil
}

func (f *fakeBackend) key(ref []byte) (fakeKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[string(ref)]
	if !ok {
		return k, ErrDeviceKeyNotFound
	}
	return k, nil
}

func (f *fakeBackend) Sign(_ context.Context, ref []byte, alg Algorithm, msg []byte) ([]byte, error) {
	k, err := f.key(ref)
	if err != nil {
		return nil, err
	}
	return softSign(k.alg, k.priv, msg)
}

func (f *fakeBackend) ECDH(_ context.Context, ref []byte, alg Algorithm, peer []byte) ([]byte, error) {
	k, err := f.key(ref)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.ecdhCall++
	f.mu.Unlock()
	return softECDH(k.alg, k.priv, peer)
}

func (f *fakeBackend) Destroy(_ context.Context, ref []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, string(ref))
	return nil
}

func (f *fakeBackend) List(context.Context) ([]DeviceKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []DeviceKey
	for id := range f.keys {
		out = append(out, DeviceKey{ID: id, Ref: []byte(id)})
	}
	return out, nil
}

func (f *fakeBackend) has(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.keys[id]
	return ok
}

func (f *fakeBackend) Seal(_ context.Context, pt, aad []byte) ([]byte, error) {
	n := make([]byte, f.sealKey.NonceSize())
	rand.Read(n)
	return f.sealKey.Seal(n, n, pt, aad), nil
}

func (f *fakeBackend) Unseal(_ context.Context, blob, aad []byte) ([]byte, error) {
	ns := f.sealKey.NonceSize()
	if len(blob) < ns {
		return nil, errors.New("short blob")
	}
	return f.sealKey.Open(nil, blob[:ns], blob[ns:], aad)
}
