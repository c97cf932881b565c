package keystore

import (
	"errors"
	"strings"
	"sync"
	"time"
)

// ErrDeviceUnavailable is wrapped by a Backend's errors while its device is
// gone (a removed token, a closed forwarding socket, a restarted TPM): the
// call failed without reaching the device, and the backend is reconnecting
// on its own. The server answers UNAVAILABLE.
var ErrDeviceUnavailable = errors.New("device unavailable")

// ErrDeviceBusy is wrapped when a call got no turn at a device that runs
// one command at a time before its deadline: the device is there but
// queued up. The server answers UNAVAILABLE.
var ErrDeviceBusy = errors.New("device busy")

// DeviceState is a device's condition as its backend sees it.
type DeviceState string

const (
	// DeviceReady: the device answers and the backend serves.
	DeviceReady DeviceState = "ready"
	// DeviceUnavailable: the device is gone; the backend reconnects with
	// backoff and calls fail fast with ErrDeviceUnavailable meanwhile.
	DeviceUnavailable DeviceState = "unavailable"
	// DeviceFailed: the backend stopped reconnecting (for example the
	// token rejected the PIN: trying again could lock it). Only a restart
	// helps.
	DeviceFailed DeviceState = "failed"
)

// Health is a snapshot of a device's condition.
type Health struct {
	State DeviceState
	// LastError is the last device failure, one line ("" if none).
	LastError string
	// Since is when State last changed.
	Since time.Time
	// Recoveries counts how often the device came back.
	Recoveries int64
}

// Ready reports whether the device serves.
func (h Health) Ready() bool { return h.State == DeviceReady }

// HealthReporter is an optional Backend capability: the device's current
// condition, and a channel that is closed at its next change (then ask
// again for a new one).
type HealthReporter interface {
	Health() Health
	HealthChanged() <-chan struct{}
}

// SealChecker is an optional capability of a device whose sealing may not
// work (its probe failed): SealError says why, nil when it works. Without
// it a Sealer or Epocher is trusted to seal.
type SealChecker interface {
	SealError() error
}

// ProbeNoter is an optional Backend capability: for each algorithm the
// device does not compute, the reason its probe gave.
type ProbeNoter interface {
	ProbeNotes() map[Algorithm]string
}

// HealthTracker keeps a device's Health for a backend: Down and Up record
// transitions, and watchers learn of each through HealthChanged. The zero
// value is a ready device.
type HealthTracker struct {
	mu         sync.Mutex
	state      DeviceState
	lastErr    string
	since      time.Time
	recoveries int64
	changed    chan struct{}
}

func (t *HealthTracker) notifyLocked() {
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
	t.since = time.Now()
}

// Down records that the device is gone (or failed, when final is set)
// because of err. It reports whether this is a change from ready.
func (t *HealthTracker) Down(err error, final bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := DeviceUnavailable
	if final {
		st = DeviceFailed
	}
	was := t.state
	if err != nil {
		t.lastErr = OneLine(err.Error())
	}
	if was == st {
		return false
	}
	if was == DeviceFailed {
		return false // final stays final
	}
	t.state = st
	t.notifyLocked()
	return was == "" || was == DeviceReady
}

// Note records a failure without changing the state (for example a failed
// reconnection attempt).
func (t *HealthTracker) Note(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.lastErr = OneLine(err.Error())
	}
}

// Up records that the device serves again. It reports whether it was down.
func (t *HealthTracker) Up() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state == "" || t.state == DeviceReady {
		return false
	}
	t.state = DeviceReady
	t.recoveries++
	t.notifyLocked()
	return true
}

// IsDown reports whether the device is unavailable or failed.
func (t *HealthTracker) IsDown() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state != "" && t.state != DeviceReady
}

// Health returns the current snapshot.
func (t *HealthTracker) Health() Health {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state
	if st == "" {
		st = DeviceReady
	}
	return Health{State: st, LastError: t.lastErr, Since: t.since, Recoveries: t.recoveries}
}

// HealthChanged returns a channel closed at the next transition.
func (t *HealthTracker) HealthChanged() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.changed == nil {
		t.changed = make(chan struct{})
	}
	return t.changed
}

// OneLine makes an error message fit one line: line breaks (from
// errors.Join, say) become "; ".
func OneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	return strings.Join(parts, "; ")
}

// Health reports the device's condition; a backend that cannot tell is
// taken to be ready.
func (s *Store) Health() Health {
	if hr, ok := s.be.(HealthReporter); ok {
		return hr.Health()
	}
	return Health{State: DeviceReady}
}

// HealthChanged returns a channel closed at the device's next change of
// condition, or nil (never) when the backend cannot tell.
func (s *Store) HealthChanged() <-chan struct{} {
	if hr, ok := s.be.(HealthReporter); ok {
		return hr.HealthChanged()
	}
	return nil
}

// Availability explains the level a new key of role and alg gets: the
// level (empty when unavailable) and, for anything below hardware, why.
func (s *Store) Availability(role Role, alg Algorithm) (Protection, string) {
	p, err := s.ProtectionFor(role, alg)
	note := ""
	if pn, ok := s.be.(ProbeNoter); ok {
		note = pn.ProbeNotes()[alg]
	}
	if err != nil {
		if errors.Is(err, ErrPolicy) {
			return "", OneLine(err.Error())
		}
		why := "the device cannot compute it"
		if note != "" {
			why += " (" + note + ")"
		}
		switch {
		case s.sealErr != nil:
			why += " and sealing failed its probe: " + s.sealErr.Error()
		case s.sealer == nil:
			why += " and cannot seal"
		}
		return "", OneLine(why)
	}
	if _, why := s.HPKEProtection(alg); why != "" && p != ProtectionSealed {
		if p == ProtectionWrapped {
			why += "; the key is generated in the device and stored wrapped under a device key, unwrapped into the device for each use"
		}
		return p, OneLine(why)
	}
	if p == ProtectionHardware {
		if rv, ok := s.be.(Revoker); ok && (!alg.IsSigning() || rv.RevokesSignatureKeys()) {
			if note := rv.RevocationNote(); note != "" {
				return p, OneLine("no per-key revocation on the device (" + note + "); a retired key stays usable from an old catalog copy while its epoch lives")
			}
		}
		return p, ""
	}
	why := "the device cannot compute it"
	if note != "" {
		why += " (" + note + ")"
	}
	return p, OneLine(why + "; the key is sealed under a device key")
}
