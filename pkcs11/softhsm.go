package pkcs11

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// softHSMPaths are where Debian and Ubuntu install SoftHSM 2.
var softHSMPaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
}

// FindSoftHSM returns the path of the SoftHSM 2 module, or "" if it is not
// installed.
func FindSoftHSM() string {
	for _, p := range softHSMPaths {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// SoftHSM is a private SoftHSM 2 installation for tests and the daemon's
// development mode: its own configuration file and token directory.
type SoftHSM struct {
	ConfPath string // dir/softhsm2.conf; SOFTHSM2_CONF points here
	Module   string // path of libsofthsm2.so
	TokenDir string // dir/tokens
	Label    string // the token label InitToken uses
}

// InitSoftHSM creates dir/softhsm2.conf (file object store, token directory
// dir/tokens, log level ERROR) and the token directory, and sets
// SOFTHSM2_CONF in the process environment.
//
// SoftHSM reads SOFTHSM2_CONF at C_Initialize. The module is initialised
// once per process and finalised when its last user (Backend or helper)
// releases it, so the configuration takes effect only if no Backend on
// SoftHSM is open at the time; InitToken reports an error otherwise.
func InitSoftHSM(dir, label string) (*SoftHSM, error) {
	mod := FindSoftHSM()
	if mod == "" {
		return nil, fmt.Errorf("pkcs11: SoftHSM not found at %v", softHSMPaths)
	}
	if label == "" || len(label) > 32 {
		return nil, errors.New("pkcs11: token label must be 1 to 32 bytes")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, fmt.Errorf("pkcs11: softhsm token dir: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("# written by mlskeyd\ndirectories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("pkcs11: softhsm config: %w", err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	return &SoftHSM{ConfPath: conf, Module: mod, TokenDir: tokens, Label: label}, nil
}

// Hold initialises the module now and keeps it initialised until release
// is called, so that InitToken and a Backend opened meanwhile share one
// initialisation: SoftHSM reads every object file of its tokens at
// C_Initialize (over a second at 20,000 objects). release may be called
// more than once.
func (h *SoftHSM) Hold() (release func(), err error) {
	mod, err := acquireModule(h.Module)
	if err != nil {
		return nil, err
	}
	if mod.conf != h.ConfPath {
		mod.release()
		return nil, fmt.Errorf("pkcs11: SoftHSM is already initialised in this process with SOFTHSM2_CONF=%q; close every Backend first", mod.conf)
	}
	var once sync.Once
	return func() { once.Do(func() { mod.release() }) }, nil
}

// Config returns a Config that opens this SoftHSM's token with pin.
func (h *SoftHSM) Config(pin string) Config {
	return Config{Module: h.Module, TokenLabel: h.Label, PIN: pin}
}

// ErrTokenExists is returned by InitToken when a token with the label is
// already initialised.
var ErrTokenExists = errors.New("pkcs11: token already initialised")

// InitToken initialises a token labelled h.Label through PKCS#11 itself:
// C_InitToken on a slot with an uninitialised token, then a session, SO
// login, C_InitPIN with userPIN and C_Logout of the SO. It returns an error
// wrapping ErrTokenExists if such a token already exists.
func (h *SoftHSM) InitToken(soPIN, userPIN string) error {
	mod, err := acquireModule(h.Module)
	if err != nil {
		return err
	}
	defer mod.release()
	if mod.conf != h.ConfPath {
		return fmt.Errorf("pkcs11: SoftHSM is already initialised in this process with SOFTHSM2_CONF=%q; close every Backend first", mod.conf)
	}
	ctx := mod.ctx
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("pkcs11: C_GetSlotList: %w", err)
	}
	slot, free := uint(0), false
	for _, sl := range slots {
		ti, err := ctx.GetTokenInfo(sl)
		if err != nil {
			continue
		}
		if ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 {
			if ti.Label == h.Label {
				return fmt.Errorf("%w: %q", ErrTokenExists, h.Label)
			}
			continue
		}
		if !free {
			slot, free = sl, true
		}
	}
	if !free {
		return errors.New("pkcs11: no slot with an uninitialised token")
	}
	if err := ctx.InitToken(slot, soPIN, h.Label); err != nil {
		return fmt.Errorf("pkcs11: C_InitToken: %w", err)
	}
	s, err := ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("pkcs11: C_OpenSession: %w", err)
	}
	defer ctx.CloseSession(s)
	if err := ctx.Login(s, p11.CKU_SO, soPIN); err != nil {
		return fmt.Errorf("pkcs11: C_Login(SO): %w", err)
	}
	if err := ctx.InitPIN(s, userPIN); err != nil {
		_ = ctx.Logout(s)
		return fmt.Errorf("pkcs11: C_InitPIN: %w", err)
	}
	if err := ctx.Logout(s); err != nil {
		return fmt.Errorf("pkcs11: C_Logout(SO): %w", err)
	}
	return nil
}

// RandomPIN returns 32 random hex characters (128 bits).
func RandomPIN() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}
