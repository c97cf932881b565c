package tpm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var (
	_ keystore.Backend        = (*Backend)(nil)
	_ keystore.Sealer         = (*Backend)(nil)
	_ keystore.Epocher        = (*Backend)(nil)
	_ keystore.EpochGenerator = (*Backend)(nil)
	_ keystore.Checker        = (*Backend)(nil)
	_ keystore.Revoker        = (*Backend)(nil)

	_ keystore.HealthReporter = (*Backend)(nil)
	_ keystore.ProbeNoter     = (*Backend)(nil)
)

// Config selects the TPM and tunes the queue and the key cache.
type Config struct {
	// Device is "/dev/tpmrm0" (the default; any device path works),
	// "tcp://HOST:PORT" or "unix://PATH" for swtpm's data channel, or
	// "sim" for the in-process go-tpm-tools simulator.
	Device string
	// SimulatorSeed, for "sim": when set, the simulator's hierarchy seeds
	// are derived from it, so the SRK, and hence every blob, is the same
	// across restarts (development mode keeps the seed in its state
	// directory). Unset means a random simulator. Insecure by design.
	SimulatorSeed []byte
	// CommandTimeout bounds how long a request waits for the TPM queue.
	// 0 means 10s. A context deadline that comes sooner wins.
	CommandTimeout time.Duration
	// LoadedKeys is the number of most recently used keys kept loaded.
	// 0 means 2: a TPM may have only 3 transient object slots, one of
	// which holds the SRK.
	LoadedKeys int
	// EpochHandles is how many persistent handles (from 0x814D4C00) the
	// sealing epochs may take; 0 means 3. See epoch.go.
	EpochHandles int
	// RevocationIndices is how many NV bit-field indices (from 0x01004D00,
	// 64 keys each) the per-key revocation of ECDH keys may define; 0 means
	// 16, negative turns it off (ECDH keys then keep only the epoch rule).
	// See revoke.go.
	RevocationIndices int
	// RevokeSignatureKeys gives new signature keys a revocation bit too,
	// as it gives ECDH keys: a deleted signature key then cannot sign from
	// an old copy of the catalog, at the cost of TPM2_PolicyNV before each
	// TPM2_Sign. Off, signature keys keep the epoch rule. Keys already made
	// keep what their blob says either way.
	RevokeSignatureKeys bool
	// Logger receives connection-loss and recovery events; nil discards
	// them.
	Logger *slog.Logger
	// HealthInterval is how often an idle Backend checks the TPM (and,
	// while it is lost, tries to reconnect). 0 means 5s; the in-process
	// simulator is not checked.
	HealthInterval time.Duration
	// RecoveryMaxBackoff caps the pause between reconnection attempts.
	// 0 means 5s.
	RecoveryMaxBackoff time.Duration
	// Observer, when set, is told of every operation on the TPM (the
	// daemon's metrics).
	Observer keystore.DeviceObserver
}

// Backend is a keystore.Backend, Sealer, Checker and Attester on one TPM 2.0. It is
// safe for concurrent use; TPM commands run one at a time.
type Backend struct {
	timeout time.Duration
	kind    string // how the TPM is reached, for Info
	rm      bool   // behind the kernel resource manager
	isSim   bool
	algs    []keystore.Algorithm
	notes   map[keystore.Algorithm]string // why an algorithm is missing
	info    keystore.DeviceInfo

	// queue has room for one token: whoever holds it owns the TPM and
	// every field below.
	queue  chan struct{}
	tpm    transport.TPM // retryTPM over raw
	raw    transport.TPMCloser
	srk    tpm2.NamedHandle
	srkPub tpm2.TPMTPublic
	lru    lru
	parsed blobCache // parsed key references, see blobcache.go
	closed bool
	// epochs maps epoch ids to their persistent parents; epochMax bounds
	// the handles they take.
	epochs   map[string]tpm2.NamedHandle
	epochMax int
	// rev maps our revocation indices to what is known of them (nil until
	// read); revTaken holds every handle of the range in use by anyone;
	// revMax bounds the indices we define; revHook, when set (by tests),
	// runs before each bit is set and may fail it.
	rev      map[tpm2.TPMHandle]*revIndex
	revTaken map[tpm2.TPMHandle]bool
	revMax   int
	revHook  func(revRef) error
	// revSign: new signature keys get a bit (Config.RevokeSignatureKeys).
	revSign bool
	// signSess is the policy session Sign reuses for keys with a bit (nil
	// until the first such signature, and after any failure); the TPM
	// resets its digest after each successful use.
	signSess      tpm2.Session
	signSessClose func() error
	// revTag marks the indices of the installation Reserve named (zero
	// until then).
	revTag [revTagSize]byte
	// revNote says why new ECDH keys get no bit (guarded by revMu, read
	// without the queue).
	revMu   sync.Mutex
	revNote string
	// ekPub is the endorsement key's TPMT_PUBLIC once Attest made it (the
	// same for the life of the endorsement seed).
	ekPub []byte

	// Reconnection (reconnect.go); guarded by the queue but health.
	dev        string
	track      *ioTracker
	lostErr    error // the transport failure that lost the TPM; nil when connected
	lostSince  time.Time
	nextTry    time.Time
	pause      time.Duration
	maxBackoff time.Duration
	final      error // reconnection stopped for good
	health     keystore.HealthTracker
	log        *slog.Logger
	done       chan struct{}
	bg         sync.WaitGroup

	// observer sees every operation (do); nil for none.
	observer keystore.DeviceObserver

	// hookLocked, when set (by tests), runs each time the queue is taken.
	hookLocked func()

	closeOnce sync.Once
	closeErr  error
}

// Open connects to the TPM, flushes stray transient objects and sessions
// (unless the kernel resource manager does it), creates the storage root
// key, probes the curves and reads the TPM's identity.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Device == "" {
		cfg.Device = "/dev/tpmrm0"
	}
	if cfg.CommandTimeout < 0 || cfg.LoadedKeys < 0 || cfg.EpochHandles < 0 {
		return nil, errors.New("tpm: CommandTimeout, LoadedKeys and EpochHandles must not be negative")
	}
	if cfg.EpochHandles == 0 {
		cfg.EpochHandles = defaultEpochHandles
	}
	switch {
	case cfg.RevocationIndices == 0:
		cfg.RevocationIndices = defaultRevIndices
	case cfg.RevocationIndices < 0:
		cfg.RevocationIndices = 0
	case cfg.RevocationIndices > maxRevIndices:
		return nil, fmt.Errorf("tpm: RevocationIndices must be at most %d", maxRevIndices)
	}
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 10 * time.Second
	}
	if cfg.LoadedKeys == 0 {
		cfg.LoadedKeys = 2
	}
	if len(cfg.SimulatorSeed) > 0 && cfg.Device != "sim" {
		return nil, errors.New("tpm: SimulatorSeed is only for Device \"sim\"")
	}
	deadline := time.Now().Add(cfg.CommandTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	raw, kind, rm, err := openDevice(cfg.Device, cfg.SimulatorSeed, deadline)
	if err != nil {
		return nil, devErr("open", err)
	}
	b := &Backend{
		timeout:  cfg.CommandTimeout,
		kind:     kind,
		rm:       rm,
		isSim:    cfg.Device == "sim",
		notes:    map[keystore.Algorithm]string{},
		queue:    make(chan struct{}, 1),
		raw:      raw,
		lru:      lru{max: cfg.LoadedKeys},
		epochs:   map[string]tpm2.NamedHandle{},
		epochMax: cfg.EpochHandles,
		revMax:   cfg.RevocationIndices,
		revSign:  cfg.RevokeSignatureKeys,
		observer: cfg.Observer,

		dev:        cfg.Device,
		track:      &ioTracker{next: raw},
		maxBackoff: cfg.RecoveryMaxBackoff,
		log:        cfg.Logger,
		done:       make(chan struct{}),
	}
	b.tpm = newRetryTPM(b.track)
	if b.maxBackoff <= 0 {
		b.maxBackoff = defaultMaxBackoff
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if err := b.init(ctx); err != nil {
		b.shutdown()
		return nil, devErr("open", err)
	}
	if !b.isSim {
		interval := cfg.HealthInterval
		if interval <= 0 {
			interval = defaultHealthInterval
		}
		b.bg.Add(1)
		go b.monitor(interval)
	}
	return b, nil
}

func (b *Backend) init(ctx context.Context) error {
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
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.createSRK(); err != nil {
		return err
	}
	if err := b.probe(); err != nil {
		return err
	}
	if !b.isSim {
		// A TPM without NV bit fields, or one whose indices in our range
		// cannot be read, keeps the epoch rule for HPKE keys.
		var rc tpm2.TPMRC
		if err := b.scanRevocations(); errors.As(err, &rc) {
			b.setRevNote("revocation indices could not be read: " + err.Error())
		} else if err != nil {
			return err
		}
	}
	return b.readInfo()
}

// flushStray flushes transient objects and sessions left by an earlier
// client: without a resource manager they stay loaded and take the few
// slots the TPM has (TPM_RC_OBJECT_MEMORY, TPM_RC_SESSION_MEMORY).
func (b *Backend) flushStray() error {
	for _, first := range []tpm2.TPMHandle{0x80000000, 0x02000000, 0x03000000} {
		for round := 0; round < 16; round++ {
			rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(b.tpm)
			if err != nil {
				return cmdErr("TPM2_GetCapability(TPM_CAP_HANDLES)", err)
			}
			hs, err := rsp.CapabilityData.Data.Handles()
			if err != nil {
				return fmt.Errorf("TPM2_GetCapability(TPM_CAP_HANDLES): %w", err)
			}
			n := 0
			for _, h := range hs.Handle {
				if h>>24 != first>>24 {
					continue
				}
				if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(b.tpm); err != nil {
					return cmdErr(fmt.Sprintf("TPM2_FlushContext(0x%08x)", uint32(h)), err)
				}
				n++
			}
			if n == 0 || !rsp.MoreData {
				break
			}
		}
	}
	return nil
}

// createSRK re-creates the storage root key from the TCG reference
// template. A primary key is derived from the owner hierarchy's seed and
// the template, so it is the same key on every start and every blob made
// under it loads again, without storing anything in the TPM's NV memory.
func (b *Backend) createSRK() error {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(b.tpm)
	if err != nil {
		return cmdErr("TPM2_CreatePrimary(SRK)", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		b.flush(rsp.ObjectHandle)
		return fmt.Errorf("TPM2_CreatePrimary(SRK): %w", err)
	}
	b.srk = tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	b.srkPub = *pub
	return nil
}

// probe asks the TPM, with TPM2_TestParms on the exact key parameters,
// which algorithms it can do. A TPM_RC means no; a transport failure
// fails Open.
func (b *Backend) probe() error {
	algs, notes, err := b.testParms()
	if err != nil {
		return err
	}
	b.algs, b.notes = algs, notes
	return nil
}

func (b *Backend) testParms() ([]keystore.Algorithm, map[keystore.Algorithm]string, error) {
	var algs []keystore.Algorithm
	notes := map[keystore.Algorithm]string{}
	for _, alg := range keystore.Algorithms {
		s, ok := algSpecs[alg]
		if !ok {
			notes[alg] = "a TPM 2.0 cannot compute it"
			continue
		}
		_, err := tpm2.TestParms{Parameters: tpm2.TPMTPublicParms{
			Type:       tpm2.TPMAlgECC,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, s.parms()),
		}}.Execute(b.tpm)
		var rc tpm2.TPMRC
		switch {
		case err == nil:
			algs = append(algs, alg)
		case errors.As(err, &rc):
			notes[alg] = cmdErr("TPM2_TestParms", err).Error()
		default:
			return nil, nil, cmdErr("TPM2_TestParms", err)
		}
	}
	return algs, notes, nil
}

// readInfo builds Info from TPM_PT_MANUFACTURER, TPM_PT_VENDOR_STRING_1..4
// and TPM_PT_FIRMWARE_VERSION_1..2.
func (b *Backend) readInfo() error {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTManufacturer),
		PropertyCount: uint32(tpm2.TPMPTFirmwareVersion2-tpm2.TPMPTManufacturer) + 1,
	}.Execute(b.tpm)
	if err != nil {
		return cmdErr("TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES)", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return fmt.Errorf("TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES): %w", err)
	}
	v := map[tpm2.TPMPT]uint32{}
	for _, p := range props.TPMProperty {
		v[p.Property] = p.Value
	}
	ascii := func(words ...uint32) string {
		var sb strings.Builder
		for _, w := range words {
			for _, c := range []byte{byte(w >> 24), byte(w >> 16), byte(w >> 8), byte(w)} {
				if c >= 0x20 && c < 0x7f {
					sb.WriteByte(c)
				}
			}
		}
		return strings.Join(strings.Fields(sb.String()), " ")
	}
	parts := []string{}
	if m := ascii(v[tpm2.TPMPTManufacturer]); m != "" {
		parts = append(parts, m)
	}
	if s := ascii(v[tpm2.TPMPTVendorString1], v[tpm2.TPMPTVendorString2], v[tpm2.TPMPTVendorString3], v[tpm2.TPMPTVendorString4]); s != "" {
		parts = append(parts, s)
	}
	parts = append(parts, fmt.Sprintf("firmware %08x.%08x", v[tpm2.TPMPTFirmwareVersion1], v[tpm2.TPMPTFirmwareVersion2]))
	parts = append(parts, "via "+b.kind)
	b.info = keystore.DeviceInfo{Backend: "tpm", Device: strings.Join(parts, " ")}
	return nil
}

// Info reports the TPM's manufacturer, vendor strings, firmware version
// and how it is reached.
func (b *Backend) Info() keystore.DeviceInfo { return b.info }

// Algorithms reports the ECDSA and ECDH curves the TPM has. Ed25519,
// Ed448, X25519 and X448 are never among them: TPM 2.0 has no such curves,
// and the keystore seals those keys instead.
func (b *Backend) Algorithms() []keystore.Algorithm {
	return append([]keystore.Algorithm(nil), b.algs...)
}

// Unsupported says why an algorithm is missing from Algorithms (for logs).
func (b *Backend) Unsupported() map[keystore.Algorithm]string {
	out := make(map[keystore.Algorithm]string, len(b.notes))
	for k, v := range b.notes {
		out[k] = v
	}
	return out
}

// Close flushes the loaded keys and the SRK and closes the connection. It
// waits for the command in flight; later calls return ErrClosed.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.done)
		b.bg.Wait()
		b.queue <- struct{}{}
		b.closed = true
		b.closeErr = b.shutdown()
		<-b.queue
	})
	return b.closeErr
}

// shutdown runs with the queue held (or before Open returns).
func (b *Backend) shutdown() error {
	var errs []error
	if b.lostErr != nil {
		// Nothing is loaded in a TPM we are not connected to.
		b.lru.entries, b.srk = nil, tpm2.NamedHandle{}
		b.signSess = nil
	}
	b.dropSignSession()
	for len(b.lru.entries) > 0 {
		if err := b.evictOldest(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.srk.Handle != 0 {
		if err := b.flush(b.srk.Handle); err != nil {
			errs = append(errs, err)
		}
		b.srk = tpm2.NamedHandle{}
	}
	if err := b.raw.Close(); err != nil {
		errs = append(errs, err)
	}
	if b.isSim {
		releaseSim()
	}
	return errors.Join(errs...)
}

// do runs f while holding the TPM. The wait is bounded by the context and
// by CommandTimeout; a TPM command, once sent, runs to completion. Every
// operation goes through here, so the observer sees them all, with the
// wait for the TPM; op, in errors "activate credential", is
// "activate_credential" there.
func (b *Backend) do(ctx context.Context, op string, f func() error) (err error) {
	if b.observer != nil {
		start := time.Now()
		defer func() { b.observer.ObserveDeviceOp(strings.ReplaceAll(op, " ", "_"), time.Since(start), err) }()
	}
	if err := b.acquire(ctx); err != nil {
		return devErr(op, err)
	}
	defer func() { <-b.queue }()
	if b.closed {
		return ErrClosed
	}
	if b.lostErr != nil {
		if err := b.reconnectLocked(); err != nil {
			return devErr(op, err)
		}
	}
	if b.hookLocked != nil {
		b.hookLocked()
	}
	err = f()
	if b.track.err != nil {
		return devErr(op, b.lostLocked(err))
	}
	return devErr(op, err)
}

func (b *Backend) acquire(ctx context.Context) error {
	select {
	case b.queue <- struct{}{}:
		return nil
	default:
	}
	wait := b.timeout
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case b.queue <- struct{}{}:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: no turn at the TPM within %v", ErrBusy, wait.Round(time.Millisecond))
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: no turn at the TPM before the deadline", ErrBusy)
		}
		return ctx.Err()
	}
}

func (b *Backend) flush(h tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(b.tpm)
	return cmdErr(fmt.Sprintf("TPM2_FlushContext(0x%08x)", uint32(h)), err)
}

// srkAuth authorises use of the SRK (empty auth value) as a parent.
func (b *Backend) srkAuth(s tpm2.Session) tpm2.AuthHandle {
	if s == nil {
		s = tpm2.PasswordAuth(nil)
	}
	return tpm2.AuthHandle{Handle: b.srk.Handle, Name: b.srk.Name, Auth: s}
}

// encSession is a one-command HMAC session salted with the SRK, with AES
// parameter encryption in the given direction: the salt is encrypted to
// the SRK's public key, so someone reading the bus cannot derive the
// session key, and the first TPM2B parameter (a secret) travels encrypted.
//
// Runs with the queue held; it ends the kept signing session (see
// dropSignSession).
func (b *Backend) encSession(dir tpm2.AuthOption) tpm2.Session {
	b.dropSignSession()
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Salted(b.srk.Handle, b.srkPub), dir)
}
