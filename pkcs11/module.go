package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// A PKCS#11 module can be initialised only once per process, and login state
// belongs to the module instance, so every Backend (and the SoftHSM helpers)
// in a process share one *p11.Ctx per module file, reference counted. The
// last release calls C_Finalize; the library itself stays loaded (no
// dlclose) so that it can be initialised again later.

type module struct {
	path string // resolved path, the registry key
	ctx  *p11.Ctx
	refs int
	conf string // SOFTHSM2_CONF at C_Initialize, for the SoftHSM helpers
	// gen counts C_Initialize calls after a device loss, so that of
	// several Backends on one module only the first to notice re-initialises
	// it (modMu guards it).
	gen uint64
}

var (
	modMu   sync.Mutex
	modules = map[string]*module{}
)

// resolveModule picks the module path: the configured one, or SoftHSM at
// its usual places.
func resolveModule(path string) (string, error) {
	if path == "" {
		path = FindSoftHSM()
		if path == "" {
			return "", fmt.Errorf("pkcs11: no module configured and SoftHSM not found at %v", softHSMPaths)
		}
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("pkcs11: module: %w", err)
	}
	if r, err := filepath.EvalSymlinks(path); err == nil {
		path = r
	}
	return path, nil
}

// acquireModule loads and initialises the module, or takes another
// reference to an already initialised one.
func acquireModule(path string) (*module, error) {
	path, err := resolveModule(path)
	if err != nil {
		return nil, err
	}
	modMu.Lock()
	defer modMu.Unlock()
	m := modules[path]
	if m == nil {
		ctx := p11.New(path)
		if ctx == nil {
			return nil, fmt.Errorf("pkcs11: cannot load module %s", path)
		}
		m = &module{path: path, ctx: ctx}
		modules[path] = m
	}
	if m.refs == 0 {
		err := m.ctx.Initialize()
		if err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return nil, fmt.Errorf("pkcs11: C_Initialize %s: %w", path, err)
		}
		m.conf = os.Getenv("SOFTHSM2_CONF")
	}
	m.refs++
	return m, nil
}

// release drops a reference; the last one finalises the module.
func (m *module) release() error {
	modMu.Lock()
	defer modMu.Unlock()
	if m.refs <= 0 {
		return errors.New("pkcs11: module released twice")
	}
	m.refs--
	if m.refs > 0 {
		return nil
	}
	if err := m.ctx.Finalize(); err != nil {
		return fmt.Errorf("pkcs11: C_Finalize: %w", err)
	}
	return nil
}

// generation returns the module's current initialisation generation.
func (m *module) generation() uint64 {
	modMu.Lock()
	defer modMu.Unlock()
	return m.gen
}

// reinit finalises and initialises the module again, which is the only way
// to reach a token again through some modules once their device was lost
// (p11-kit-client.so answers CKR_DEVICE_ERROR to everything after its
// server went away, even when the server is back). seen is the generation
// the caller's sessions belong to: if another Backend has re-initialised
// the module since, reinit does nothing. It returns the new generation.
func (m *module) reinit(seen uint64) (uint64, error) {
	modMu.Lock()
	defer modMu.Unlock()
	if m.gen != seen || m.refs == 0 {
		return m.gen, nil
	}
	_ = m.ctx.Finalize() // CKR_CRYPTOKI_NOT_INITIALIZED after a failed attempt
	if err := m.ctx.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return m.gen, fmt.Errorf("C_Initialize: %w", err)
	}
	m.gen++
	return m.gen, nil
}
