package keystore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
)

// epochFake adds sealing epochs to fakeBackend: one AES-GCM key per epoch,
// blobs prefixed with their epoch id.
type epochFake struct {
	*fakeBackend
	emu       sync.Mutex
	epochKeys map[string]cipher.AEAD
	budget    int // 0: unlimited
}

func newEpochFake(algs ...Algorithm) *epochFake {
	return &epochFake{fakeBackend: newFake(algs...), epochKeys: map[string]cipher.AEAD{}}
}

func (f *epochFake) Epochs(context.Context) ([]string, error) {
	f.emu.Lock()
	defer f.emu.Unlock()
	var out []string
	for id := range f.epochKeys {
		out = append(out, id)
	}
	return out, nil
}

func (f *epochFake) NewEpoch(_ context.Context, id string) error {
	f.emu.Lock()
	defer f.emu.Unlock()
	if f.budget > 0 && len(f.epochKeys) >= f.budget {
		return ErrEpochBudget
	}
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	g, _ := cipher.NewGCM(b)
	f.epochKeys[id] = g
	return nil
}

func (f *epochFake) DestroyEpoch(_ context.Context, id string) error {
	f.emu.Lock()
	defer f.emu.Unlock()
	delete(f.epochKeys, id)
	return nil
}

func (f *epochFake) SealIn(_ context.Context, epoch string, pt, aad []byte) ([]byte, error) {
	f.emu.Lock()
	g := f.epochKeys[epoch]
	f.emu.Unlock()
	if g == nil {
		return nil, fmt.Errorf("epoch %s: %w", epoch, ErrEpochDestroyed)
	}
	n := make([]byte, g.NonceSize())
	rand.Read(n)
	return g.Seal(append([]byte("epoch:"+epoch+":"), n...), n, pt, aad), nil
}

func (f *epochFake) Unseal(_ context.Context, blob, aad []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(blob, []byte("epoch:"))
	epoch, rest, ok2 := bytes.Cut(rest, []byte(":"))
	if !ok || !ok2 {
		return f.fakeBackend.Unseal(context.Background(), blob, aad)
	}
	f.emu.Lock()
	g := f.epochKeys[string(epoch)]
	f.emu.Unlock()
	if g == nil {
		return nil, fmt.Errorf("epoch %s: %w", epoch, ErrEpochDestroyed)
	}
	ns := g.NonceSize()
	if len(rest) < ns {
		return nil, errors.New("short blob")
	}
	return g.Open(nil, rest[:ns], rest[ns:], aad)
}

func (f *epochFake) epochCount() int {
	f.emu.Lock()
	defer f.emu.Unlock()
	return len(f.epochKeys)
}
