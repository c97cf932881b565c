package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// acquire takes a session from the pool, opening one if none is idle. It
// blocks while maxSessions operations are in flight, until ctx is done or
// the backend closes.
func (b *Backend) acquire(ctx context.Context) (p11.SessionHandle, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-b.done:
		return 0, ErrClosed
	}
	b.poolMu.Lock()
	if n := len(b.idle); n > 0 {
		s := b.idle[n-1]
		b.idle = b.idle[:n-1]
		b.poolMu.Unlock()
		return s, nil
	}
	b.poolMu.Unlock()
	s, err := b.mod.ctx.OpenSession(b.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		<-b.sem
		return 0, fmt.Errorf("C_OpenSession: %w", err)
	}
	return s, nil
}

// release returns a session to the pool, or closes it if discard is set.
func (b *Backend) release(s p11.SessionHandle, discard bool) {
	if discard {
		_ = b.mod.ctx.CloseSession(s) // may already be gone
	} else {
		b.poolMu.Lock()
		b.idle = append(b.idle, s)
		b.poolMu.Unlock()
	}
	<-b.sem
}

// withSession runs fn with a session of its own: no other goroutine uses
// that session until fn returns (SoftHSM crashes when two threads share one).
// Every token call goes through here. If fn fails because the session or
// the login is gone, the session is discarded, the module logs in again and
// fn runs once more on a fresh session. op names the operation for the
// observer (Config.Observer), which sees every call, retries and the wait
// for a session included.
func (b *Backend) withSession(ctx context.Context, op string, fn func(s p11.SessionHandle) error) (err error) {
	if b.cfg.Observer != nil {
		start := time.Now()
		defer func() { b.cfg.Observer.ObserveDeviceOp(op, time.Since(start), err) }()
	}
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	// While the device is gone, fail at once: the reconnection runs in
	// the background (recover.go), and only its own probes get through.
	if b.health.IsDown() && !isRecovering(ctx) {
		return b.down()
	}
	for attempt := 0; ; attempt++ {
		s, err := b.acquire(ctx)
		if err != nil {
			if deviceGone(err) {
				return b.gone(ctx, err)
			}
			return err
		}
		err = fn(s)
		var p *poisoned
		if errors.As(err, &p) {
			b.release(s, true)
			if deviceGone(p.err) {
				return b.gone(ctx, p.err)
			}
			return p.err
		}
		if deviceGone(err) {
			b.release(s, true)
			return b.gone(ctx, err)
		}
		if !sessionLost(err) {
			b.release(s, false)
			return err
		}
		b.release(s, true)
		if attempt > 0 {
			// A fresh session after a fresh login failed the same way:
			// the device, not the session, is the problem.
			return b.gone(ctx, err)
		}
		b.pruneIdle()
		if lerr := b.relogin(); lerr != nil {
			if errors.Is(lerr, ErrClosed) {
				return lerr
			}
			werr := fmt.Errorf("%w (login again: %v)", err, lerr)
			if pinRejected(lerr) {
				// No more attempts: they could lock the token.
				b.downErr.Store(&werr)
				if b.health.Down(werr, true) {
					b.log.Error("pkcs11: the token rejected the PIN on re-login; not trying again", "token", b.tokenLabel())
				}
				return &unavailableError{werr}
			}
			return b.gone(ctx, werr)
		}
	}
}

// gone handles a failure that means the device is lost: outside a
// reconnection it marks the device down and starts reconnecting; inside one
// it just fails the attempt.
func (b *Backend) gone(ctx context.Context, err error) error {
	if isRecovering(ctx) {
		return err
	}
	return b.lost(err)
}

// pruneIdle closes idle sessions that are no longer valid (after
// C_CloseAllSessions or a device removal they all are), so that the retry
// does not pick up another dead one.
func (b *Backend) pruneIdle() {
	b.poolMu.Lock()
	idle := b.idle
	b.idle = nil
	b.poolMu.Unlock()
	var keep []p11.SessionHandle
	for _, s := range idle {
		if _, err := b.mod.ctx.GetSessionInfo(s); err != nil {
			_ = b.mod.ctx.CloseSession(s)
			continue
		}
		keep = append(keep, s)
	}
	b.poolMu.Lock()
	b.idle = append(b.idle, keep...)
	b.poolMu.Unlock()
}

// relogin logs the module in again on the anchor session, reopening the
// anchor if it is gone. CKR_USER_ALREADY_LOGGED_IN counts as success.
//
// A PIN rejected here is remembered and the login is not tried again until
// the Backend is reopened: repeated wrong PINs would lock the token.
func (b *Backend) relogin() error {
	b.loginMu.Lock()
	defer b.loginMu.Unlock()
	if b.pinErr != nil {
		return b.pinErr
	}
	err := b.loginAnchor()
	if sessionLost(err) {
		_ = b.mod.ctx.CloseSession(b.anchor)
		b.anchor, err = b.mod.ctx.OpenSession(b.slot, p11.CKF_SERIAL_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
		err = b.loginAnchor()
	}
	if err != nil {
		if isCode(err, p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_EXPIRED, p11.CKR_PIN_LOCKED) {
			b.pinErr = err
		}
		return err
	}
	b.cache.clear() // handles may not survive a logout
	b.relogins.Add(1)
	return nil
}

func (b *Backend) loginAnchor() error {
	err := b.mod.ctx.Login(b.anchor, p11.CKU_USER, b.pin)
	if err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		return fmt.Errorf("C_Login: %w", err)
	}
	return nil
}

// requireLogin turns "the session is not logged in" into
// CKR_USER_NOT_LOGGED_IN, so that withSession logs in again. Without it a
// lost login would look like a missing key, since private objects are
// invisible to public sessions.
func (b *Backend) requireLogin(s p11.SessionHandle) error {
	info, err := b.mod.ctx.GetSessionInfo(s)
	if err != nil {
		return fmt.Errorf("C_GetSessionInfo: %w", err)
	}
	switch info.State {
	case p11.CKS_RO_USER_FUNCTIONS, p11.CKS_RW_USER_FUNCTIONS:
		return nil
	}
	return p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
}
