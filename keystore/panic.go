package keystore

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrInternal marks a failure that is a bug in the daemon or a device
// library, not the caller's or the device's fault: a panic recovered in a
// worker goroutine. Its value and stack go to the log, never to the caller
// (a panic's text can quote anything the failing code held).
var ErrInternal = errors.New("internal error (a panic; the daemon log has the stack)")

// RecoverTo is deferred at the top of a worker goroutine that runs device
// or MLS work for a request. gRPC recovers panics only on the handler's own
// goroutine; one in a worker would end the daemon, and with it every
// caller's calls. RecoverTo turns it into an error in *errp (the request
// fails and its batch is undone as on any other error) and logs what
// panicked. Keys a device made before the panic are left to the batch
// journal, which the next start resolves.
func (s *Store) RecoverTo(what string, errp *error) {
	r := recover()
	if r == nil {
		return
	}
	s.log.Error("worker panic", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	*errp = fmt.Errorf("%s: %w", what, ErrInternal)
}

// guarded runs one step of a background task (a sweep, an epoch
// rotation) with RecoverTo: a panic in it fails that step, which is logged
// and retried at the next tick like any failure, instead of ending the
// daemon and every caller's calls. Only the step's own state can be left
// half done, and each step is written to be re-run.
func (s *Store) guarded(what string, f func() error) (err error) {
	defer s.RecoverTo(what, &err)
	return f()
}
