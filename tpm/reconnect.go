package tpm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// The connection to a TPM can break under a running daemon: swtpm or a
// resource manager restarts, a socket closes. Every command runs inside
// do, with the queue held; when the transport fails there, the Backend
//
//   - marks the TPM lost (health unavailable) and answers that call, and
//     every later one until it is back, with an error wrapping
//     keystore.ErrDeviceUnavailable;
//   - reconnects on the next call (or health check) once the backoff has
//     passed: dial again, TPM2_Startup for swtpm, flush stray handles
//     without a resource manager, re-create the SRK and check it is the
//     same key (else the catalog's blobs cannot load: reconnection stops),
//     probe the curves again. The LRU starts empty: keys load again on
//     demand.
//
// TPM_RC_RETRY, YIELDED and TESTING stay the retrying transport's business
// (a restarted swtpm answers RETRY at first).

const (
	defaultHealthInterval = 5 * time.Second
	defaultMaxBackoff     = 5 * time.Second
	firstBackoff          = 50 * time.Millisecond
)

// unavailableError is a call's failure while the TPM is lost.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string {
	return fmt.Sprintf("%v: %v", keystore.ErrDeviceUnavailable, e.err)
}
func (e *unavailableError) Unwrap() []error { return []error{keystore.ErrDeviceUnavailable, e.err} }

// errFinal marks a TPM that answers again but is no longer the one whose
// keys the catalog holds.
var errFinal = errors.New("tpm: the TPM is not the one the daemon started with")

// Health reports the TPM's condition (keystore.HealthReporter).
func (b *Backend) Health() keystore.Health { return b.health.Health() }

// HealthChanged returns a channel closed at the next change of condition.
func (b *Backend) HealthChanged() <-chan struct{} { return b.health.HealthChanged() }

// ProbeNotes says why an algorithm is missing (keystore.ProbeNoter).
func (b *Backend) ProbeNotes() map[keystore.Algorithm]string { return b.Unsupported() }

// lostLocked records a transport failure (queue held) and returns the
// caller's error.
func (b *Backend) lostLocked(cmdErr error) error {
	err := b.track.err
	b.lostErr = err
	b.lostSince = time.Now()
	b.pause = firstBackoff
	b.nextTry = time.Now().Add(b.pause)
	if b.health.Down(err, false) {
		b.log.Warn("tpm: connection lost; reconnecting", "device", b.kind, "err", keystore.OneLine(err.Error()))
	}
	if cmdErr == nil {
		cmdErr = err
	}
	return &unavailableError{cmdErr}
}

// downLocked is the fast failure while the TPM is lost.
func (b *Backend) downLocked() error {
	if b.final != nil {
		return &unavailableError{fmt.Errorf("%s: reconnection stopped: %w; restart the daemon", b.kind, b.final)}
	}
	return &unavailableError{fmt.Errorf("%s is gone since %s, reconnecting: %w", b.kind, b.lostSince.UTC().Format(time.RFC3339), b.lostErr)}
}

// reconnectLocked tries to reconnect if the backoff allows (queue held).
func (b *Backend) reconnectLocked() error {
	if b.final != nil || time.Now().Before(b.nextTry) {
		return b.downLocked()
	}
	err := b.reopenLocked()
	if err != nil {
		b.pause = min(b.pause*2, b.maxBackoff)
		b.nextTry = time.Now().Add(b.pause)
		if errors.Is(err, errFinal) {
			b.final = err
			b.health.Down(err, true)
			b.log.Error("tpm: reconnection stopped", "device", b.kind, "err", keystore.OneLine(err.Error()))
			return b.downLocked()
		}
		b.health.Note(err)
		b.lostErr = err
		return b.downLocked()
	}
	b.lostErr = nil
	b.health.Up()
	b.log.Info("tpm: connection back; serving again", "device", b.kind)
	return nil
}

// reopenLocked dials the TPM again and restores the SRK.
func (b *Backend) reopenLocked() error {
	_ = b.raw.Close()
	// Handles of the old connection mean nothing now: a restarted TPM
	// forgot them, and flushStray below removes them from one that did not.
	b.lru.entries = nil
	b.signSess = nil
	oldSRK := tpm2.Marshal(b.srkPub)
	b.srk = tpm2.NamedHandle{}
	raw, _, _, err := openDevice(b.dev, nil, time.Now().Add(b.timeout))
	if err != nil {
		b.raw = closedTPM{}
		return err
	}
	b.raw = raw
	b.track = &ioTracker{next: raw}
	rt := newRetryTPM(b.track)
	if old, ok := b.tpm.(*retryTPM); ok {
		rt.retried.Store(old.retried.Load())
	}
	b.tpm = rt
	if strings.HasPrefix(b.kind, "swtpm") {
		if err := startup(b.tpm); err != nil {
			return err
		}
	}
	if !b.rm {
		if err := b.flushStray(); err != nil {
			return err
		}
	}
	if err := b.createSRK(); err != nil {
		return err
	}
	if !bytes.Equal(oldSRK, tpm2.Marshal(b.srkPub)) {
		return fmt.Errorf("%w: its storage root key changed (another TPM, or the owner hierarchy was cleared), so the catalog's keys cannot load", errFinal)
	}
	algs, _, err := b.testParms()
	if err != nil {
		return err
	}
	for _, a := range b.algs {
		if !slices.Contains(algs, a) {
			return fmt.Errorf("%w: it no longer offers %s", errFinal, a)
		}
	}
	return nil
}

// closedTPM stands for a connection that could not be made again.
type closedTPM struct{}

func (closedTPM) Send([]byte) ([]byte, error) { return nil, errors.New("tpm: not connected") }
func (closedTPM) Close() error                { return nil }

// monitor checks the TPM while idle, so that health reports a lost TPM
// before a request trips over it, and keeps reconnecting while it is lost.
func (b *Backend) monitor(interval time.Duration) {
	defer b.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		_ = b.do(ctx, "health check", func() error {
			b.dropSignSession()
			_, err := tpm2.GetRandom{BytesRequested: 1}.Execute(b.tpm)
			return err
		})
		cancel()
	}
}
