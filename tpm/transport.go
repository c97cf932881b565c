package tpm

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// maxResponse bounds a response read from a socket. TPM responses are at
// most a few KiB (MAX_RESPONSE_SIZE is 4096 on the TPMs we know); a larger
// size field means the stream is out of step.
const maxResponse = 64 << 10

// streamTPM sends raw TPM commands over a byte stream, as swtpm's
// --server data channel expects, and reads each response whole: the
// 10-byte header (tag, responseSize, responseCode) first, then the rest
// by its size. One Read per response is not enough, because a stream may
// deliver a response in pieces.
type streamTPM struct {
	conn   net.Conn
	broken error // set after an I/O error: the stream is out of step
}

func dialStream(network, addr string, timeout time.Duration) (*streamTPM, error) {
	conn, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	return &streamTPM{conn: conn}, nil
}

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	if s.broken != nil {
		return nil, fmt.Errorf("tpm: connection unusable after an earlier error: %w", s.broken)
	}
	rsp, err := s.roundTrip(cmd)
	if err != nil {
		s.broken = err
		return nil, err
	}
	return rsp, nil
}

func (s *streamTPM) roundTrip(cmd []byte) ([]byte, error) {
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpm: writing command: %w", err)
	}
	var hdr [10]byte
	if _, err := io.ReadFull(s.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("tpm: reading response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < uint32(len(hdr)) || size > maxResponse {
		return nil, fmt.Errorf("tpm: response size %d out of range", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(s.conn, rsp[len(hdr):]); err != nil {
		return nil, fmt.Errorf("tpm: reading response body: %w", err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error { return s.conn.Close() }

// Warnings after which the TPM asks to be asked again: it did not run the
// command (so re-sending the same bytes, session nonces included, is
// valid). TPM_RC_RETRY comes, for example, on the first command after
// swtpm restarts with saved state.
const (
	rcRetry   = 0x922 // TPM_RC_RETRY
	rcYielded = 0x908 // TPM_RC_YIELDED
	rcTesting = 0x90A // TPM_RC_TESTING
)

// retryTPM wraps a transport and re-sends a command that the TPM answered
// with TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING, after a short
// growing pause, a few times. Being a transport, it covers every command,
// including the ones go-tpm sends itself to start sessions.
type retryTPM struct {
	next     transport.TPM
	attempts int           // total sends, at least 1
	backoff  time.Duration // first pause; doubles each time
	sleep    func(time.Duration)
	retried  atomic.Int64 // re-sends so far, for tests and diagnostics
}

func newRetryTPM(next transport.TPM) *retryTPM {
	return &retryTPM{next: next, attempts: 5, backoff: 2 * time.Millisecond, sleep: time.Sleep}
}

func (r *retryTPM) Send(cmd []byte) ([]byte, error) {
	pause := r.backoff
	for i := 1; ; i++ {
		rsp, err := r.next.Send(cmd)
		if err != nil || i >= r.attempts || len(rsp) < 10 {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
			r.retried.Add(1)
			r.sleep(pause)
			pause *= 2
		default:
			return rsp, nil
		}
	}
}

// simTPM is the in-process go-tpm-tools simulator. Its Read hands out
// whatever the last Write produced, which is always one whole response.
type simTPM struct {
	sim *simulator.Simulator
}

func (s *simTPM) Send(cmd []byte) ([]byte, error) {
	if _, err := s.sim.Write(cmd); err != nil {
		return nil, err
	}
	return io.ReadAll(s.sim)
}

func (s *simTPM) Close() error { return s.sim.Close() }

// simSeed turns Config.SimulatorSeed into the int64 the simulator takes:
// the first 8 bytes of its SHA-256, so that any seed length works and
// equal seeds give equal TPMs.
func simSeed(seed []byte) int64 {
	h := sha256.Sum256(seed)
	return int64(binary.BigEndian.Uint64(h[:8]))
}

// simMu hands the process-wide simulator to one Backend at a time, as
// go-tpm-tools' own lock does, but without blocking Open forever.
var simMu = make(chan struct{}, 1)

// openSimulator gets the simulator, waiting at most until deadline for
// another Backend in the process to close it.
func openSimulator(seed []byte, deadline time.Time) (*simTPM, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case simMu <- struct{}{}:
	case <-t.C:
		return nil, fmt.Errorf("%w: the in-process simulator is in use by another Backend", ErrBusy)
	}
	var (
		sim *simulator.Simulator
		err error
	)
	if len(seed) > 0 {
		sim, err = simulator.GetWithFixedSeedInsecure(simSeed(seed))
	} else {
		// A random seed, so that two unseeded runs are different TPMs, as
		// two real TPMs are (the simulator's own default is fixed).
		var b [8]byte
		if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
			<-simMu
			return nil, err
		}
		sim, err = simulator.GetWithFixedSeedInsecure(int64(binary.BigEndian.Uint64(b[:])))
	}
	if err != nil {
		<-simMu
		return nil, err
	}
	return &simTPM{sim: sim}, nil
}

// releaseSim is called after the simulator is closed.
func releaseSim() { <-simMu }

// openDevice opens Config.Device. kind describes it for Info.
func openDevice(dev string, seed []byte, deadline time.Time) (t transport.TPMCloser, kind string, rm bool, err error) {
	switch {
	case dev == "sim":
		s, err := openSimulator(seed, deadline)
		if err != nil {
			return nil, "", false, err
		}
		return s, "simulator", false, nil
	case strings.HasPrefix(dev, "tcp://"):
		addr := strings.TrimPrefix(dev, "tcp://")
		s, err := dialStream("tcp", addr, time.Until(deadline))
		if err != nil {
			return nil, "", false, fmt.Errorf("%w (is swtpm running with --server type=tcp,port=%s?)", err, portOf(addr))
		}
		return s, "swtpm " + dev, false, nil
	case strings.HasPrefix(dev, "unix://"):
		path := strings.TrimPrefix(dev, "unix://")
		s, err := dialStream("unix", path, time.Until(deadline))
		if err != nil {
			return nil, "", false, fmt.Errorf("%w (is swtpm running with --server type=unixio,path=%s?)", err, path)
		}
		return s, "swtpm " + dev, false, nil
	case strings.HasPrefix(dev, "/"):
		t, err := linuxtpm.Open(dev)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// The usual case on a machine without a TPM: say so, and what
			// to use instead, rather than leave a bare stat error.
			return nil, "", false, fmt.Errorf("no TPM at %s: this machine has none or its driver is not loaded (for development: swtpm with --tpm tcp://HOST:PORT, or --dev, whose default is the simulator)", dev)
		case errors.Is(err, fs.ErrPermission):
			return nil, "", false, fmt.Errorf("%w (run mlskeyd as a user in the device's group, tss on Debian)", err)
		case err != nil:
			return nil, "", false, err
		}
		// The kernel's resource manager (tpmrm) virtualises handles and
		// flushes a client's objects when it closes the device.
		return t, dev, strings.HasPrefix(dev, "/dev/tpmrm"), nil
	}
	return nil, "", false, fmt.Errorf("tpm: unknown device %q (want /dev/tpmrm0, tcp://HOST:PORT, unix://PATH or sim)", dev)
}

// startup sends TPM2_Startup(CLEAR) to a TPM that may not have had it
// (swtpm without --flags startup-clear). TPM_RC_INITIALIZE means it was
// already started, which is the usual case.
func startup(t transport.TPM) error {
	_, err := tpm2.Startup{StartupType: tpm2.TPMSUClear}.Execute(t)
	if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
		return cmdErr("TPM2_Startup", err)
	}
	return nil
}

// ioTracker remembers the first transport failure (a broken socket, a
// device read error) under the retrying layer: the TPM's own answers, even
// errors, are not failures here. The Backend checks it after each command
// to tell a lost TPM from a refused command.
type ioTracker struct {
	next transport.TPM
	err  error
}

func (t *ioTracker) Send(cmd []byte) ([]byte, error) {
	rsp, err := t.next.Send(cmd)
	if err != nil && t.err == nil {
		t.err = err
	}
	return rsp, err
}

// portOf returns the port of HOST:PORT, or addr itself when it has none.
func portOf(addr string) string {
	if _, port, err := net.SplitHostPort(addr); err == nil {
		return port
	}
	return addr
}
