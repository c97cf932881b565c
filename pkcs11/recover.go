package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// A token can disappear under a running daemon: a USB token is pulled, an
// HSM reboots, the p11-kit server forwarding a host token into a container
// restarts. The Backend then
//
//   - notices it: a call fails with a code meaning the device (not the
//     session) is gone, a session keeps failing after a fresh login, or the
//     health check on the anchor session fails while idle;
//   - fails every call fast with an error wrapping
//     keystore.ErrDeviceUnavailable (the daemon answers UNAVAILABLE) instead
//     of letting callers queue on a dead device;
//   - reconnects in the background with exponential backoff: finalise and
//     initialise the module again (all its sessions are void after that),
//     find the token by label and serial (it may come back in another slot),
//     open the anchor, log in, probe the algorithms and sealing again and
//     check they are what Open found; then serves again.
//
// Keys are token objects found by CKA_ID, so nothing is lost; the handle
// cache is dropped. A rejected PIN ends the attempts for good (repeating it
// could lock the token), as for a re-login.

// Defaults for Config.HealthInterval and Config.RecoveryMaxBackoff.
const (
	defaultHealthInterval = 5 * time.Second
	defaultMaxBackoff     = 5 * time.Second
	firstBackoff          = 50 * time.Millisecond
	reconnectProbeTimeout = time.Minute
)

// deviceGone: codes after which no session on this module instance will
// work again: the device is gone, or the module lost track of it.
func deviceGone(err error) bool {
	return isCode(err,
		p11.CKR_DEVICE_ERROR,
		p11.CKR_DEVICE_REMOVED,
		p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_CRYPTOKI_NOT_INITIALIZED,
		p11.CKR_SLOT_ID_INVALID,
	)
}

func pinRejected(err error) bool {
	return isCode(err, p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_EXPIRED, p11.CKR_PIN_LOCKED)
}

// unavailableError is a call's failure while the device is gone.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string {
	return fmt.Sprintf("%v: %v", keystore.ErrDeviceUnavailable, e.err)
}
func (e *unavailableError) Unwrap() []error { return []error{keystore.ErrDeviceUnavailable, e.err} }

type recoveringKey struct{}

// recovering marks the context of the reconnection's own probes, which
// must reach the device while callers are still turned away.
func recovering(ctx context.Context) context.Context {
	return context.WithValue(ctx, recoveringKey{}, true)
}

func isRecovering(ctx context.Context) bool {
	v, _ := ctx.Value(recoveringKey{}).(bool)
	return v
}

// Health reports the token's condition (keystore.HealthReporter).
func (b *Backend) Health() keystore.Health { return b.health.Health() }

// HealthChanged returns a channel closed at the token's next change of
// condition.
func (b *Backend) HealthChanged() <-chan struct{} { return b.health.HealthChanged() }

// down is the fast failure while the device is gone.
func (b *Backend) down() error {
	h := b.health.Health()
	last := b.downErr.Load()
	if last == nil {
		e := errors.New(h.LastError)
		last = &e
	}
	if h.State == keystore.DeviceFailed {
		return &unavailableError{fmt.Errorf("token %q: reconnection stopped: %w; restart the daemon", b.tokenLabel(), *last)}
	}
	return &unavailableError{fmt.Errorf("token %q is gone since %s, reconnecting: %w", b.tokenLabel(), h.Since.UTC().Format(time.RFC3339), *last)}
}

func (b *Backend) tokenLabel() string {
	if b.cfg.TokenLabel != "" {
		return b.cfg.TokenLabel
	}
	return "serial " + b.cfg.TokenSerial
}

// lost records that the device is gone and starts reconnecting. It returns
// the error for the caller.
func (b *Backend) lost(err error) error {
	b.downErr.Store(&err)
	if b.health.Down(err, false) {
		b.log.Warn("pkcs11: token unavailable; reconnecting", "token", b.tokenLabel(), "err", keystore.OneLine(err.Error()))
		b.bg.Add(1)
		go b.recoverLoop()
	}
	return &unavailableError{err}
}

// recoverLoop reconnects with backoff until the device is back, the PIN is
// rejected or the Backend closes.
func (b *Backend) recoverLoop() {
	defer b.bg.Done()
	pause := firstBackoff
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(pause)
		select {
		case <-b.done:
			t.Stop()
			return
		case <-t.C:
		}
		err := b.reconnect()
		switch {
		case err == nil:
			b.health.Up()
			b.log.Info("pkcs11: token back; serving again", "token", b.tokenLabel(), "attempts", attempt)
			return
		case errors.Is(err, ErrClosed):
			return
		case pinRejected(err) || errors.Is(err, errFinal):
			b.downErr.Store(&err)
			b.health.Down(err, true)
			b.log.Error("pkcs11: reconnection stopped; restart the daemon once the token is sound", "token", b.tokenLabel(), "err", keystore.OneLine(err.Error()))
			return
		}
		b.health.Note(err)
		if attempt == 1 || pause < b.maxBackoff {
			b.log.Info("pkcs11: token still unavailable", "token", b.tokenLabel(), "attempt", attempt, "err", keystore.OneLine(err.Error()))
		}
		pause = min(pause*2, b.maxBackoff)
	}
}

var errFinal = errors.New("pkcs11: the token is not the one the daemon started with")

// reconnect re-initialises the module, finds the token, logs in and checks
// that the device can still do what Open found.
func (b *Backend) reconnect() error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return ErrClosed
	}
	err := b.reopenLocked()
	b.closeMu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(recovering(context.Background()), reconnectProbeTimeout)
	defer cancel()
	specs, _, err := b.probe(ctx)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	var missing []string
	for alg := range b.specs {
		if specs[alg] == nil || specs[alg].route != b.specs[alg].route {
			missing = append(missing, string(alg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the token came back without %v, which it had at start-up", missing)
	}
	mode := b.SealMode()
	if err := b.setUpSealing(ctx); err != nil {
		return fmt.Errorf("sealing: %w", err)
	}
	if now := b.SealMode(); now != mode {
		// The sealed keys in the catalog need the mode they were made in.
		b.sealMu.Lock()
		b.sealMode = mode
		b.sealMu.Unlock()
		return fmt.Errorf("sealing was %q at start-up and is %q now", mode, now)
	}
	// Wrapped keys in the catalog need the token to unwrap them as it did
	// at start-up, and new keys were promised the same level.
	b.sealMu.RLock()
	was := b.wrap
	b.sealMu.RUnlock()
	if err := b.setUpWrapping(ctx); err != nil {
		return fmt.Errorf("wrapping: %w", err)
	}
	b.sealMu.Lock()
	now := b.wrap
	var lost []string
	for alg := range was.algs {
		if !now.algs[alg] {
			lost = append(lost, string(alg)+" ("+now.notes[alg]+")")
		}
	}
	if len(lost) > 0 {
		b.wrap = was // what GetInfo promised; the retry probes again
	}
	b.sealMu.Unlock()
	if len(lost) > 0 {
		slices.Sort(lost)
		return fmt.Errorf("the token came back without key wrapping for %s, which it had at start-up", strings.Join(lost, ", "))
	}
	return b.destroyPending(ctx)
}

// deferDestroy remembers a key whose destruction failed because the token
// was gone. The keystore already retired it (or never committed it), so
// it must not outlive the outage: reconnect destroys it before serving
// again. A daemon that stops first leaves it to start-up reconciliation.
func (b *Backend) deferDestroy(id string) {
	b.pendingMu.Lock()
	defer b.pendingMu.Unlock()
	if b.pending == nil {
		b.pending = map[string]bool{}
	}
	b.pending[id] = true
}

func (b *Backend) destroyPending(ctx context.Context) error {
	b.pendingMu.Lock()
	ids := make([]string, 0, len(b.pending))
	for id := range b.pending {
		ids = append(ids, id)
	}
	b.pendingMu.Unlock()
	for _, id := range ids {
		if err := b.Destroy(ctx, EncodeRef(id)); err != nil {
			return fmt.Errorf("destroy key %s left over from the outage: %w", id, err)
		}
		b.pendingMu.Lock()
		delete(b.pending, id)
		b.pendingMu.Unlock()
		b.log.Info("pkcs11: destroyed a key whose destruction the outage had interrupted", "key", id)
	}
	return nil
}

// reopenLocked runs with closeMu held exclusively: no operation is using a
// session.
func (b *Backend) reopenLocked() error {
	b.poolMu.Lock()
	idle := b.idle
	b.idle = nil
	b.poolMu.Unlock()
	for _, s := range idle {
		_ = b.mod.ctx.CloseSession(s) // void after C_Finalize anyway
	}
	b.loginMu.Lock()
	defer b.loginMu.Unlock()
	if b.anchor != 0 {
		_ = b.mod.ctx.CloseSession(b.anchor)
		b.anchor = 0
	}
	b.cache.clear()
	gen, err := b.mod.reinit(b.modGen)
	if err != nil {
		return err
	}
	b.modGen = gen
	slot, token, err := findToken(b.mod.ctx, b.cfg)
	if err != nil {
		return err
	}
	if token.Flags&p11.CKF_USER_PIN_LOCKED != 0 {
		return fmt.Errorf("%w: token %q: user PIN is locked", errFinal, token.Label)
	}
	if b.token.SerialNumber != "" && token.SerialNumber != b.token.SerialNumber {
		return fmt.Errorf("%w: serial %s, was %s", errFinal, token.SerialNumber, b.token.SerialNumber)
	}
	b.infoMu.Lock()
	b.slot, b.token = slot, token
	b.infoMu.Unlock()
	if b.anchor, err = b.mod.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION); err != nil {
		b.anchor = 0
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	if b.pinErr != nil {
		return b.pinErr
	}
	if err := b.loginAnchor(); err != nil {
		if pinRejected(err) {
			b.pinErr = err
		}
		return err
	}
	return nil
}

// monitor checks the device while nobody calls, so that health reports a
// lost token before the next request trips over it.
func (b *Backend) monitor() {
	defer b.bg.Done()
	t := time.NewTicker(b.healthInterval)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		if b.health.IsDown() {
			continue
		}
		if err := b.ping(); err != nil {
			_ = b.lost(err)
		}
	}
}

// ping asks for the anchor session's state: cheap, and it crosses a
// forwarding socket.
func (b *Backend) ping() error {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return nil
	}
	// Take an operation slot, so that a module that must be used one call
	// at a time (p11-kit's client, MaxSessions 1) is.
	select {
	case b.sem <- struct{}{}:
	case <-b.done:
		return nil
	}
	defer func() { <-b.sem }()
	b.loginMu.Lock()
	_, err := b.mod.ctx.GetSessionInfo(b.anchor)
	b.loginMu.Unlock()
	if deviceGone(err) {
		return fmt.Errorf("C_GetSessionInfo: %w", err)
	}
	if sessionLost(err) {
		// The anchor alone is gone: log in again on a new one; a device
		// that cannot even do that is lost.
		if lerr := b.relogin(); lerr != nil && (deviceGone(lerr) || sessionLost(lerr)) {
			return fmt.Errorf("C_GetSessionInfo: %w (login again: %v)", err, lerr)
		}
	}
	return nil
}
