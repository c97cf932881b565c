// Command mlskeyd is the MLS key daemon: it holds MLS signature and HPKE
// private keys in a device and serves MLS-level operations over gRPC on a
// Unix socket. See README.md for the settings.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/internal/suggest"
	"github.com/mlskeyd/mlskeyd/internal/version"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	"github.com/mlskeyd/mlskeyd/server"
	"github.com/mlskeyd/mlskeyd/tpm"
)

func main() {
	// A daemon must outlive its log reader: under "mlskeyd 2>&1 | tee log"
	// Ctrl-C ends tee too, and Go's default for a write to a closed
	// stdout or stderr pipe is to die of SIGPIPE, before the shutdown
	// that removes the socket. Asking for SIGPIPE turns those writes into
	// EPIPE errors, which logOutput handles.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	out := &logOutput{primary: os.Stderr}
	os.Exit(exitCode(out, run(os.Args[1:], os.Getenv, os.Stdout, out)))
}

// exitCode prints err, if any, as the one line "mlskeyd: <message>" and
// returns the exit status: 0 for success and for help asked for, else 1.
func exitCode(w io.Writer, err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(w, "mlskeyd: %s\n", strings.Join(strings.Fields(err.Error()), " "))
	return 1
}

// config is what run needs from the settings, every value checked before
// anything is created on disk or in a device.
type config struct {
	dev                   bool
	backend, state        string
	socket                string
	mode                  os.FileMode
	gid                   int
	policy                server.Policy
	access                server.Access
	lifetime, maxLifetime time.Duration
	auditPath             string
	failClosed            bool
	auditMaxSize          int
	tpmTimeout            time.Duration
	tpmLoadedKeys         int
	tpmEpochHandles       int
	tpmRevIndices         int
	tpmRevokeSign         bool
	sealEpoch             time.Duration // 0 with sealPerRetirement
	sealPerRetirement     bool
	pkcs11Sessions        int
	auditKeep             int
	sweepEvery            time.Duration
	// hpke is --init-key-protection by key-agreement algorithm.
	hpke map[keystore.Algorithm]keystore.Protection
}

// Bounds of numeric settings, so that a typo is refused with the valid
// range instead of running with a surprising value.
const (
	maxLifetimeBound = 10 * 365 * 24 * time.Hour
	maxTPMLoadedKeys = 64
	// The TPM specification guarantees only 7 persistent objects in all.
	maxTPMEpochHandles = 7
	// maxTPMRevIndices is tpm's limit on revocation indices.
	maxTPMRevIndices = 256
	maxSessions      = 1024
)

func checkSettings(cfg *settings) (*config, error) {
	c := &config{backend: cfg.str("backend"), state: cfg.str("state-dir"), socket: cfg.str("socket")}
	var err error
	if c.dev, err = cfg.bool("dev"); err != nil {
		return nil, err
	}
	if c.backend != "pkcs11" && c.backend != "tpm" {
		return nil, fmt.Errorf("--backend %q is not supported (want pkcs11 or tpm)", c.backend)
	}
	if c.dev && c.state == "" {
		return nil, errors.New("--dev needs --state-dir")
	}
	// The simulator's keys live in the daemon's memory (its seed in a
	// file): they would be served, and attested, as hardware keys.
	if c.backend == "tpm" && cfg.str("tpm") == "sim" && !c.dev {
		return nil, errors.New("--tpm sim is the in-process TPM simulator, whose keys are not protected by any hardware: it is for --dev only")
	}
	if c.mode, err = cfg.fileMode("socket-mode"); err != nil {
		return nil, err
	}
	if c.policy, err = loadPolicy(cfg); err != nil {
		return nil, err
	}
	if c.access, err = loadAccess(cfg); err != nil {
		return nil, err
	}
	if c.gid, err = socketGroup(cfg.str("socket-group")); err != nil {
		return nil, err
	}
	if c.lifetime, err = cfg.duration("keypackage-lifetime", server.MinKeyPackageLifetime, maxLifetimeBound); err != nil {
		return nil, err
	}
	if c.maxLifetime, err = cfg.duration("keypackage-max-lifetime", server.MinKeyPackageLifetime, maxLifetimeBound); err != nil {
		return nil, err
	}
	if c.lifetime > c.maxLifetime {
		return nil, fmt.Errorf("--keypackage-lifetime %v is over --keypackage-max-lifetime %v", c.lifetime, c.maxLifetime)
	}
	if c.failClosed, err = cfg.bool("audit-fail-closed"); err != nil {
		return nil, err
	}
	if c.auditMaxSize, err = cfg.int("audit-max-size", 0, math.MaxInt); err != nil {
		return nil, err
	}
	if c.auditKeep, err = cfg.int("audit-keep", 0, math.MaxInt32); err != nil {
		return nil, err
	}
	if c.sweepEvery, err = cfg.duration("sweep-interval", 0, 24*time.Hour); err != nil {
		return nil, err
	}
	if c.tpmTimeout, err = cfg.duration("tpm-command-timeout", time.Millisecond, time.Hour); err != nil {
		return nil, err
	}
	if c.tpmLoadedKeys, err = cfg.int("tpm-loaded-keys", 1, maxTPMLoadedKeys); err != nil {
		return nil, err
	}
	if c.pkcs11Sessions, err = cfg.int("pkcs11-max-sessions", 0, maxSessions); err != nil {
		return nil, err
	}
	if c.tpmEpochHandles, err = cfg.int("tpm-epoch-handles", 1, maxTPMEpochHandles); err != nil {
		return nil, err
	}
	if c.tpmRevIndices, err = cfg.int("tpm-revocation-indices", 0, maxTPMRevIndices); err != nil {
		return nil, err
	}
	switch v := cfg.str("tpm-revocation-roles"); v {
	case "hpke":
	case "all":
		c.tpmRevokeSign = true
	default:
		return nil, fmt.Errorf("--tpm-revocation-roles %q is not supported (want hpke or all)", v)
	}
	if c.hpke, err = initKeyProtection(cfg.str("init-key-protection")); err != nil {
		return nil, err
	}
	if cfg.str("seal-epoch") == "retire" {
		c.sealPerRetirement = true
	} else if c.sealEpoch, err = cfg.duration("seal-epoch", time.Minute, 365*24*time.Hour); err != nil {
		return nil, fmt.Errorf("%w, or \"retire\"", err)
	}
	return c, nil
}

func run(args []string, getenv func(string) string, stdout io.Writer, stderr *logOutput) (err error) {
	getenv = takePINFromEnv(getenv)
	if len(args) > 0 && args[0] == "bench" {
		return runBench(args[1:], getenv, stdout, stderr)
	}
	cfg := newSettings()
	if err := cfg.parse(args, getenv, stdout); err != nil {
		return err
	}
	if v, _ := cfg.bool("version"); v {
		_, err := fmt.Fprintln(stdout, "mlskeyd", version.String())
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	c, err := checkSettings(cfg)
	if err != nil {
		return err
	}
	state := c.state
	releaseDev := func() {}
	if c.dev {
		if releaseDev, err = setUpDev(cfg, state, c.backend, log); err != nil {
			return err
		}
	}
	defer releaseDev()
	if c.backend != "tpm" {
		// The token selection and the PIN are settings too: a missing or
		// unreadable one is refused before the state directory, the audit
		// log or the socket exist.
		_, pinFile, err := pkcs11Selection(cfg)
		if err != nil {
			return err
		}
		if _, err := readPIN(pinFile, getenv); err != nil {
			return err
		}
	}
	if state == "" {
		state = "/var/lib/mlskeyd"
	}
	stderr.setFallback(filepath.Join(state, "mlskeyd.log"))
	if cfg.str("catalog") == "" {
		if err := os.MkdirAll(state, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		cfg.byName["catalog"].value = filepath.Join(state, "catalog.db")
	}
	socket := cfg.str("socket")
	if socket == "" {
		socket = "/run/mlskeyd/mlskeyd.sock"
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := catchHUP()
	notify := newNotifier(getenv, log)
	obs, err := newObservability(cfg, log)
	if err != nil {
		return err
	}
	defer obs.stop()

	// The socket is bound before the device is opened: until the device
	// is ready, health answers NOT_SERVING and GetInfo the start-up phase,
	// so that "starting" is not mistaken for "dead".
	svc := server.NewService(nil, server.Options{
		Version: version.String(), Logger: log, DefaultLifetime: c.lifetime, MaxLifetime: c.maxLifetime,
		Policy: c.policy, Access: c.access, OnRateLimited: obs.rateLimited,
	})
	// The phase is also systemd's status line (systemctl status), until
	// READY=1 once the catalog is reconciled.
	phase := func(p string) {
		svc.SetPhase(p)
		notify.status(p)
	}
	phase("opening the device")
	auditPath := cfg.str("audit-log")
	if auditPath == "" {
		auditPath = filepath.Join(state, "audit.log")
	}
	// Every record is written with one write(2) as the call happens, so a
	// crash of the daemon loses none. fsync per record, which a machine
	// crash needs, costs a disk flush on every signature: it is what
	// fail_closed buys, and only then is it paid.
	sync := audit.SyncNever
	if c.failClosed {
		sync = audit.SyncAlways
	}
	alog, err := audit.Open(auditPath, audit.Options{Sync: sync, MaxSize: int64(c.auditMaxSize), Keep: c.auditKeep, OnError: func(err error) { log.Error("audit log rotation", "err", err) }})
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	// The last hash, kept in the daemon's own log, lets an operator detect
	// a truncated audit log later (see mlskeyctl audit verify).
	log.Info("audit log", "path", auditPath, "fail_closed", c.failClosed, "last_seq", alog.LastSeq(), "last_hash", alog.LastHash())
	// Closed last, after the store and the device, so that every call and
	// every destruction of the shutdown is recorded.
	defer func() {
		log.Info("audit log closed", "last_seq", alog.LastSeq(), "last_hash", alog.LastHash())
		alog.Close()
	}()
	gs, hs := server.NewGRPCServer(svc, log,
		&server.Auditor{Log: alog, FailClosed: c.failClosed, Logger: log, OnWriteFailure: obs.auditWriteFailed},
		obs.interceptors()...)
	// Under socket activation the listener is systemd's socket, already
	// bound (and kept by systemd when the daemon exits); otherwise the
	// daemon binds it here, before the device opens.
	l, err := listen(socket, c.mode, c.gid, log)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	started := false
	defer func() {
		if !started {
			gs.Stop() // closes the listener, which removes a socket the daemon bound
		}
	}()
	log.Info("socket bound; opening the device", "socket", l.Addr().String(), "backend", c.backend)

	be, err := openBackend(ctx, cfg, c, getenv, log, obs.deviceObserver())
	releaseDev()
	if err != nil {
		return err
	}
	// hung is set when calls are still running at exit: then the store
	// and the device stay open under them, and the next start reconciles.
	hung := false
	defer func() {
		if !hung {
			be.Close()
		}
	}()
	adopt, err := cfg.bool("adopt-device")
	if err != nil {
		return err
	}
	phase("reconciling the catalog with the device")
	// The audit log is open before the catalog, so that what start-up does
	// to keys on its own (reconciliation) is recorded like every call.
	onEvent := auditEvents(alog, log, obs.auditWriteFailed)
	store, err := keystore.Open(ctx, cfg.str("catalog"), be, keystore.Options{
		MinProtection: c.policy.KeystoreMinProtection(), Logger: log,
		AdoptDevice: adopt, OnEvent: onEvent,
		EpochLength: c.sealEpoch, EpochPerRetirement: c.sealPerRetirement,
		HPKEProtection: c.hpke,
	})
	if err != nil {
		var berr *keystore.BindingError
		if errors.As(err, &berr) {
			onEvent(keystore.Event{Kind: keystore.EventRefused, Reason: berr.Error()})
			return fmt.Errorf("refusing to start: %w%s", err, bindingHint(cfg.str("backend"), berr.AdoptPossible))
		}
		return err
	}
	defer func() {
		if hung {
			return
		}
		if cerr := store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("shutdown: %w", cerr)
		}
	}()
	store.StartSweeper(c.sweepEvery)
	svc.Ready(store)
	started = true
	go server.WatchDeviceHealth(ctx, store, hs, log)

	obs.watchStore(store)
	info := be.Info()
	log.Info("serving", "socket", l.Addr().String(), "backend", info.Backend, "device", info.Device,
		"catalog", cfg.str("catalog"), "version", version.String(), "dev", c.dev)
	notify.ready("serving on " + l.Addr().String())
	rl := &reloader{args: args, getenv: getenv, svc: svc, alog: alog, log: log, notify: notify, auditFailed: obs.auditWriteFailed}
	go rl.run(ctx, hup)
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Shutdown: KeyPackage batches still generating are aborted (their
	// device keys destroyed, the caller told UNAVAILABLE), other calls
	// finish; then the store retries what it failed to destroy, the device
	// closes, and the audit log closes last.
	notify.stopping()
	log.Info("shutting down: aborting key generation, finishing other calls")
	hs.Shutdown()
	store.Shutdown()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		log.Warn("in-flight calls did not finish; cancelling them", "after", shutdownGrace)
		go gs.Stop() // returns when every handler has (grpc.WaitForHandlers)
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			hung = true
			return fmt.Errorf("calls still running %v after shutdown began; exiting without closing the device (the next start reconciles)", 2*shutdownGrace)
		}
	}
	log.Info("stopped", "socket_removed", socket)
	return nil
}

// shutdownGrace is how long shutdown waits for in-flight calls, and then
// again for cancelled ones.
const shutdownGrace = 30 * time.Second

// openBackend opens the configured device.
// observer, if not nil, sees every device operation (the metrics).
func openBackend(ctx context.Context, cfg *settings, c *config, getenv func(string) string, log *slog.Logger, observer keystore.DeviceObserver) (keystore.Backend, error) {
	if c.backend == "tpm" {
		var seed []byte
		if f := cfg.str("tpm-simulator-seed-file"); f != "" {
			var err error
			if seed, err = readSecretFile(f); err != nil {
				return nil, fmt.Errorf("--tpm-simulator-seed-file: %w", err)
			}
		}
		return tpm.Open(ctx, tpm.Config{Device: cfg.str("tpm"), SimulatorSeed: seed, CommandTimeout: c.tpmTimeout, LoadedKeys: c.tpmLoadedKeys, EpochHandles: c.tpmEpochHandles, RevocationIndices: tpmRevIndices(c.tpmRevIndices), RevokeSignatureKeys: c.tpmRevokeSign, Logger: log, Observer: observer})
	}
	pc, pinFile, err := pkcs11Selection(cfg)
	if err != nil {
		return nil, err
	}
	pin, err := readPIN(pinFile, getenv)
	if err != nil {
		return nil, err
	}
	pc.PIN, pc.MaxSessions, pc.Logger, pc.Observer = pin, c.pkcs11Sessions, log, observer
	return pkcs11.Open(ctx, pc)
}

func newLogger(cfg *settings, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.str("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", cfg.str("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.str("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", cfg.str("log-format"))
}

// jsonNames lists the JSON member names of struct type t.
func jsonNames(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// loadPolicy reads the config file's "policy" object and adds
// --require-hardware to its minimum protection levels.
func loadPolicy(cfg *settings) (server.Policy, error) {
	var p server.Policy
	if len(cfg.policy) > 0 {
		dec := json.NewDecoder(bytes.NewReader(cfg.policy))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			msg := err.Error()
			// encoding/json names an unknown field without the valid ones.
			if name, ok := strings.CutPrefix(msg, `json: unknown field "`); ok {
				name = strings.TrimSuffix(name, `"`)
				msg = fmt.Sprintf("unknown key %q", name)
				if near := suggest.Nearest(name, jsonNames(reflect.TypeFor[server.Policy]())); near != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", near)
				}
			}
			return p, fmt.Errorf("config file %s: policy: %s", cfg.configPath, msg)
		}
	}
	hw, err := minProtection(cfg.str("require-hardware"))
	if err != nil {
		return p, err
	}
	for role, level := range hw {
		if p.MinProtection == nil {
			p.MinProtection = map[string]string{}
		}
		p.MinProtection[string(role)] = string(level)
	}
	return p, p.Check()
}

func loadAccess(cfg *settings) (server.Access, error) {
	uids, err := cfg.ids("admin-uids")
	if err != nil {
		return server.Access{}, err
	}
	gids, err := cfg.ids("admin-gids")
	return server.Access{AdminUIDs: uids, AdminGIDs: gids}, err
}

// socketGroup resolves --socket-group (a name or a number); -1 for none.
func socketGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return -1, fmt.Errorf("--socket-group: no group %q on this system (create it with groupadd, or give a gid)", name)
	}
	if err != nil {
		return -1, fmt.Errorf("--socket-group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// initKeyProtection reads --init-key-protection: one level for every
// suite, or SUITE=LEVEL pairs (a bare level among them is the level of the
// suites not named). Suites sharing a key-agreement algorithm must agree.
func initKeyProtection(v string) (map[keystore.Algorithm]keystore.Protection, error) {
	out := map[keystore.Algorithm]keystore.Protection{}
	if strings.TrimSpace(v) == "" {
		return out, nil
	}
	level := func(l string) (keystore.Protection, error) {
		p := keystore.Protection(strings.TrimSpace(l))
		if p.Rank() == 0 {
			return "", fmt.Errorf("--init-key-protection: unknown level %q (want hardware, wrapped or sealed)", l)
		}
		return p, nil
	}
	bySuite := map[keystore.Algorithm]mls.CipherSuite{}
	var all keystore.Protection
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, l, ok := strings.Cut(part, "=")
		if !ok {
			p, err := level(part)
			if err != nil {
				return nil, err
			}
			all = p
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(id), 0, 16)
		su, lerr := mls.LookupSuite(mls.CipherSuite(n))
		if err != nil || lerr != nil {
			return nil, fmt.Errorf("--init-key-protection: %q is not a known cipher suite", id)
		}
		p, err := level(l)
		if err != nil {
			return nil, err
		}
		alg := keystore.Algorithm(su.KEMAlgorithm)
		if prev, ok := out[alg]; ok && prev != p {
			return nil, fmt.Errorf("--init-key-protection: suites %d and %d share %s keys and must have one level", bySuite[alg], su.ID, alg)
		}
		out[alg], bySuite[alg] = p, su.ID
	}
	if all != "" {
		for _, su := range mls.Suites() {
			if alg := keystore.Algorithm(su.KEMAlgorithm); out[alg] == "" {
				out[alg] = all
			}
		}
	}
	return out, nil
}

func minProtection(v string) (map[keystore.Role]keystore.Protection, error) {
	out := map[keystore.Role]keystore.Protection{}
	for _, r := range strings.Split(v, ",") {
		switch r = strings.TrimSpace(r); r {
		case "":
		case "all":
			for _, role := range []keystore.Role{keystore.RoleSignature, keystore.RoleInit, keystore.RoleLeafEncryption} {
				out[role] = keystore.ProtectionHardware
			}
		default:
			role := keystore.Role(strings.ReplaceAll(r, "-", "_"))
			if !role.Valid() {
				return nil, fmt.Errorf("--require-hardware: unknown role %q (want signature, init, leaf_encryption or all)", r)
			}
			out[role] = keystore.ProtectionHardware
		}
	}
	return out, nil
}

// tpmRevIndices maps the flag (0: off) onto tpm.Config (negative: off).
func tpmRevIndices(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// auditEvents writes what the keystore does to keys on its own authority
// into the audit log: one record per event, as the daemon's own operation
// "Keystore<Kind>" (e.g. KeystoreDestroyed, KeystoreQuarantined), with the
// keys and the reason.
func auditEvents(alog *audit.Log, log *slog.Logger, lost func()) func(keystore.Event) {
	exe, _ := os.Executable()
	return func(ev keystore.Event) {
		kind := string(ev.Kind)
		rec := audit.Record{
			UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), Exe: exe,
			Operation: "Keystore" + strings.ToUpper(kind[:1]) + kind[1:],
			Outcome:   audit.OutcomeOK, Code: "OK", Reason: ev.Reason,
		}
		switch {
		case ev.Kind == keystore.EventRefused:
			rec.Outcome, rec.Code = audit.OutcomeError, "FailedPrecondition"
		case ev.Err != nil:
			rec.Outcome, rec.Code = audit.OutcomeError, "Unavailable"
		}
		if len(ev.KeyIDs) > 0 {
			rec.KeyID, rec.KeyIDs = ev.KeyIDs[0], ev.KeyIDs[1:]
		}
		if err := alog.Append(rec); err != nil {
			log.Error("audit record lost", "event", kind, "keys", len(ev.KeyIDs), "err", err)
			lost()
		}
	}
}

// bindingHint says, after a refusal to pair a catalog with a device, which
// settings choose them on this backend: naming the other backend's flags
// would send the operator to settings that play no part.
func bindingHint(backend string, adoptPossible bool) string {
	hint := "; check --catalog and the device selection (--pkcs11-uri, --pkcs11-module, --pkcs11-token or --pkcs11-serial)"
	if backend == "tpm" {
		hint = "; check --catalog and the device selection (--tpm; each TPM needs its own state directory)"
	}
	if adoptPossible {
		hint += ", or, if this is the right pair, start once with --adopt-device (README: Catalog and device)"
	}
	return hint
}
