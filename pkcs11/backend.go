package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var (
	_ keystore.Backend          = (*Backend)(nil)
	_ keystore.Epocher          = (*Backend)(nil)
	_ keystore.EpochSealChecker = (*Backend)(nil)
	_ keystore.Checker          = (*Backend)(nil)
	_ keystore.Lister           = (*Backend)(nil)

	_ keystore.HealthReporter = (*Backend)(nil)
	_ keystore.SealChecker    = (*Backend)(nil)
	_ keystore.ProbeNoter     = (*Backend)(nil)
)

// Config selects the module, the token and the credentials.
type Config struct {
	// Module is the path of the PKCS#11 library. Empty means SoftHSM at
	// /usr/lib/softhsm/libsofthsm2.so or
	// /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel or TokenSerial selects the token (at least one; if both
	// are set, both must match).
	TokenLabel  string
	TokenSerial string
	// TokenManufacturer and TokenModel narrow the choice further (a
	// PKCS#11 URI's manufacturer and model); empty matches any.
	TokenManufacturer, TokenModel string
	// PIN is the user PIN. The caller reads it from a file or the
	// environment; this package never logs it or puts it in an error.
	PIN string
	// MaxSessions bounds the pooled sessions (and so the concurrent
	// operations). 0 means 2*GOMAXPROCS+2. Either way it is capped at 64
	// and by the token's ulMaxRwSessionCount and ulMaxSessionCount-1 (one
	// read-only session holds the login) when the token states them.
	MaxSessions int
	// Logger receives device-loss and recovery events; nil discards them.
	Logger *slog.Logger
	// HealthInterval is how often an idle Backend checks that the token
	// is still there. 0 means 5s.
	HealthInterval time.Duration
	// RecoveryMaxBackoff caps the pause between reconnection attempts
	// after the token was lost. 0 means 5s.
	RecoveryMaxBackoff time.Duration
	// Observer, when set, is told of every operation on the token (the
	// daemon's metrics).
	Observer keystore.DeviceObserver
}

// Backend is a keystore.Backend, Lister, Sealer and Checker on one
// PKCS#11 token. It is safe for concurrent use.
type Backend struct {
	mod    *module
	modGen uint64 // the module generation our sessions belong to
	cfg    Config // PIN cleared; for reconnecting
	log    *slog.Logger
	slot   uint
	pin    string
	infoMu sync.Mutex // guards token against a reconnect
	token  p11.TokenInfo

	forwarded      bool // the module is p11-kit's client (C_GetInfo)
	health         keystore.HealthTracker
	downErr        atomic.Pointer[error] // the failure that took the device down
	healthInterval time.Duration
	maxBackoff     time.Duration
	bg             sync.WaitGroup // monitor and reconnection goroutines
	pendingMu      sync.Mutex
	pending        map[string]bool // ids to destroy once the token is back

	sem    chan struct{} // one slot per in-flight operation
	poolMu sync.Mutex
	idle   []p11.SessionHandle

	loginMu  sync.Mutex
	anchor   p11.SessionHandle // holds the login; never used for operations
	relogins atomic.Int64
	pinErr   error // a PIN failure on re-login; no further attempts

	cache handleCache
	// searches counts C_FindObjectsInit calls: a search is linear in the
	// token's objects, so tests check that hot paths make none.
	searches atomic.Int64
	// storeMu serialises creating and destroying token objects. SoftHSM
	// 2.6's file object store fails about 1% of concurrent token-object
	// generations with CKR_GENERAL_ERROR (TestParallelGenerate reproduces
	// it without the lock), and serial generation is barely slower: the
	// file I/O dominates either way.
	storeMu sync.Mutex
	// findMu keeps searches and token-object writes apart: SoftHSM's
	// search rescans its token directory, and a token object created or
	// destroyed meanwhile can fail with CKR_GENERAL_ERROR (seen under
	// load: a batch's look-up of the new epoch's wrapping key while
	// another made it). Searches share it; creating or destroying a token
	// object holds it alone, for that one call (tokenWrite). Both are
	// rare on hot paths, where handles are cached.
	findMu sync.RWMutex
	// secretsAtOpen is the token's secret keys found at Open, for the
	// first Epochs (seal.go).
	secretsAtOpen atomic.Pointer[secretKeysSeen]
	// startView is the rest of what Open's one pass over the token found,
	// for the first Binding and List (startup.go).
	startMu   sync.Mutex
	startView *startupView
	specs     map[keystore.Algorithm]*algSpec // supported algorithms only
	notes     map[keystore.Algorithm]string   // why an algorithm is missing

	sealMu sync.RWMutex
	// How this token seals, chosen by probing (sealprobe.go): "gcm",
	// "hmac-kdf", or "" with the reason in sealErr.
	sealMode string
	sealErr  error
	// Which key-agreement algorithms this token can wrap (wrapprobe.go).
	wrap wrapState

	done      chan struct{}
	closeOnce sync.Once
	closeMu   sync.RWMutex // operations hold it shared; Close exclusive
	closed    bool
	closeErr  error
}

// Open initialises the module, finds the token, logs in once, probes the
// algorithms (including the X25519/X448 route) and checks any sealing key
// from before epochs; the keystore manages the epoch keys.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.TokenLabel == "" && cfg.TokenSerial == "" && cfg.TokenManufacturer == "" && cfg.TokenModel == "" {
		return nil, errors.New("pkcs11: set TokenLabel or TokenSerial")
	}
	if cfg.PIN == "" {
		return nil, errors.New("pkcs11: no PIN configured")
	}
	if cfg.MaxSessions < 0 {
		return nil, errors.New("pkcs11: MaxSessions must not be negative")
	}
	// How long each step took goes to the debug log: with many objects
	// on a token, loading it (C_Initialize) and each search over it
	// (sealing keys) are much of the start-up time.
	start := time.Now()
	mod, err := acquireModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	initTook := time.Since(start)
	b := &Backend{mod: mod, modGen: mod.generation(), pin: cfg.PIN, done: make(chan struct{}),
		log: cfg.Logger, healthInterval: cfg.HealthInterval, maxBackoff: cfg.RecoveryMaxBackoff}
	b.cfg = cfg
	b.cfg.PIN = ""
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.healthInterval <= 0 {
		b.healthInterval = defaultHealthInterval
	}
	if b.maxBackoff <= 0 {
		b.maxBackoff = defaultMaxBackoff
	}
	ok := false
	defer func() {
		if !ok {
			b.shutdown()
		}
	}()

	if b.slot, b.token, err = findToken(mod.ctx, cfg); err != nil {
		return nil, err
	}
	if b.token.Flags&p11.CKF_USER_PIN_LOCKED != 0 {
		return nil, fmt.Errorf("pkcs11: token %q: user PIN is locked", b.token.Label)
	}

	n := 2*runtime.GOMAXPROCS(0) + 2
	// p11-kit's client module sends every call over one connection to its
	// server, so concurrency buys nothing there; and p11-kit 0.24's client
	// can leave concurrent calls waiting forever when its server dies
	// under them (TestP11KitServerKilled hung about one run in ten). One
	// operation at a time, unless configured otherwise.
	if info, err := mod.ctx.GetInfo(); err == nil && strings.TrimSpace(info.ManufacturerID) == p11KitManufacturer {
		b.forwarded = true
		n = 1
	}
	if cfg.MaxSessions > 0 {
		n = cfg.MaxSessions
	}
	n = min(n, 64)
	if m := b.token.MaxRwSessionCount; m != p11.CK_EFFECTIVELY_INFINITE && m != p11.CK_UNAVAILABLE_INFORMATION {
		n = min(n, int(m))
	}
	if m := b.token.MaxSessionCount; m != p11.CK_EFFECTIVELY_INFINITE && m != p11.CK_UNAVAILABLE_INFORMATION {
		n = min(n, int(m)-1) // one for the anchor
	}
	b.sem = make(chan struct{}, max(n, 1))

	// The anchor session keeps the module logged in even when every pool
	// session is closed (closing the last session logs the user out). It is
	// read-only, so it does not count against ulMaxRwSessionCount.
	if b.anchor, err = mod.ctx.OpenSession(b.slot, p11.CKF_SERIAL_SESSION); err != nil {
		b.anchor = 0
		return nil, devErr("open", fmt.Errorf("C_OpenSession: %w", err))
	}
	if err := b.loginAnchor(); err != nil {
		return nil, devErr("login", err)
	}
	t := time.Now()
	if b.specs, b.notes, err = b.probe(ctx); err != nil {
		return nil, devErr("probe", err)
	}
	probeTook := time.Since(t)
	t = time.Now()
	if err := b.checkLegacySealKeys(ctx); err != nil {
		return nil, devErr("seal key", err)
	}
	// A token that cannot seal still serves what it computes; SealError
	// says why, and the keystore offers no sealed keys.
	if err := b.setUpSealing(ctx); err != nil {
		return nil, devErr("probe sealing", err)
	}
	if err := b.setUpWrapping(ctx); err != nil {
		return nil, devErr("probe wrapping", err)
	}
	b.log.Debug("pkcs11: token opened", "token", b.tokenLabel(), "took", time.Since(start).Round(time.Millisecond),
		"initialize", initTook.Round(time.Millisecond), "probe", probeTook.Round(time.Millisecond), "sealing_keys", time.Since(t).Round(time.Millisecond))
	if err := b.SealError(); err != nil {
		b.log.Warn("pkcs11: the token cannot seal; keys it cannot compute are unavailable", "token", b.tokenLabel(), "why", err.Error())
	}
	b.bg.Add(1)
	go b.monitor()
	ok = true
	return b, nil
}

// findToken returns the slot whose initialised token matches.
func findToken(ctx *p11.Ctx, cfg Config) (uint, p11.TokenInfo, error) {
	label, serial := cfg.TokenLabel, cfg.TokenSerial
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, p11.TokenInfo{}, devErr("open", fmt.Errorf("C_GetSlotList: %w", err))
	}
	var avail []string
	var found []uint
	var info p11.TokenInfo
	for _, sl := range slots {
		ti, err := ctx.GetTokenInfo(sl)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		avail = append(avail, fmt.Sprintf("%q (serial %s)", ti.Label, ti.SerialNumber))
		if (label == "" || ti.Label == label) && (serial == "" || ti.SerialNumber == serial) &&
			(cfg.TokenManufacturer == "" || ti.ManufacturerID == cfg.TokenManufacturer) && (cfg.TokenModel == "" || ti.Model == cfg.TokenModel) {
			found = append(found, sl)
			info = ti
		}
	}
	var wants []string
	for _, w := range [][2]string{{"label", label}, {"serial", serial}, {"manufacturer", cfg.TokenManufacturer}, {"model", cfg.TokenModel}} {
		if w[1] != "" {
			wants = append(wants, fmt.Sprintf("%s %q", w[0], w[1]))
		}
	}
	want := strings.Join(wants, " and ")
	switch {
	case len(found) == 0:
		list := "none"
		if len(avail) > 0 {
			list = strings.Join(avail, ", ")
		}
		return 0, info, fmt.Errorf("pkcs11: no initialised token with %s; available tokens: %s", want, list)
	case len(found) > 1:
		return 0, info, fmt.Errorf("pkcs11: %d tokens with %s; select by serial; available tokens: %s", len(found), want, strings.Join(avail, ", "))
	}
	return found[0], info, nil
}

// Close closes every session and releases the module (the last Backend of
// a module calls C_Finalize). It waits for operations in flight; callers
// blocked waiting for a session get ErrClosed. It never calls C_Logout.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.done)
		b.closeMu.Lock()
		b.closed = true
		b.closeMu.Unlock()
		b.bg.Wait()
		b.closeErr = b.shutdown()
	})
	return b.closeErr
}

func (b *Backend) shutdown() error {
	b.poolMu.Lock()
	for _, s := range b.idle {
		_ = b.mod.ctx.CloseSession(s)
	}
	b.idle = nil
	b.poolMu.Unlock()
	if b.anchor != 0 {
		_ = b.mod.ctx.CloseSession(b.anchor)
		b.anchor = 0
	}
	return b.mod.release()
}

// Info describes the token and the X25519/X448 routes chosen by the probe.
func (b *Backend) Info() keystore.DeviceInfo {
	b.infoMu.Lock()
	defer b.infoMu.Unlock()
	d := fmt.Sprintf("%s %s token %q serial %s; x25519=%s x448=%s",
		b.token.ManufacturerID, b.token.Model, b.token.Label, b.token.SerialNumber,
		b.Route(keystore.X25519), b.Route(keystore.X448))
	if m := b.SealMode(); m != "" {
		d += " seal=" + m
	}
	if b.forwarded {
		d += " via p11-kit"
	}
	return keystore.DeviceInfo{Backend: "pkcs11", Device: d, URI: b.uriLocked()}
}

// URI is the token's PKCS#11 URI (RFC 7512) with the module's path:
// what --pkcs11-uri takes to select this token again.
func (b *Backend) URI() string {
	b.infoMu.Lock()
	defer b.infoMu.Unlock()
	return b.uriLocked()
}

func (b *Backend) uriLocked() string {
	module := b.cfg.Module
	if module == "" {
		module = b.mod.path
	}
	return TokenURI(b.token.Model, b.token.ManufacturerID, b.token.SerialNumber, b.token.Label, module)
}

// Algorithms reports the algorithms that passed the probe at Open, in
// keystore.Algorithms order.
func (b *Backend) Algorithms() []keystore.Algorithm {
	var out []keystore.Algorithm
	for _, a := range keystore.Algorithms {
		if b.specs[a] != nil {
			out = append(out, a)
		}
	}
	return out
}

// Route reports how alg is implemented: RouteStandard, RouteMontgomery,
// RouteEdwardsQuirk (X25519/X448 through SoftHSM's Edwards generator) or
// RouteNone.
func (b *Backend) Route(alg keystore.Algorithm) string {
	if s := b.specs[alg]; s != nil {
		return s.route
	}
	return RouteNone
}

// ProbeNotes explains, for each algorithm the probe rejected, what failed.
func (b *Backend) ProbeNotes() map[keystore.Algorithm]string {
	out := make(map[keystore.Algorithm]string, len(b.notes))
	for k, v := range b.notes {
		out[k] = v
	}
	return out
}

func (b *Backend) spec(alg keystore.Algorithm) (*algSpec, error) {
	if s := b.specs[alg]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("%w: %s", keystore.ErrUnsupportedAlgorithm, alg)
}
