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
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	"github.com/mlskeyd/mlskeyd/server"
	"github.com/mlskeyd/mlskeyd/tpm"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "mlskeyd: %v\n", err)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	getenv = takePINFromEnv(getenv)
	cfg := newSettings()
	if err := cfg.parse(args, getenv, stderr); err != nil {
		return errUsage
	}
	if v, _ := cfg.bool("version"); v {
		fmt.Fprintln(os.Stdout, "mlskeyd", version)
		return nil
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	dev, err := cfg.bool("dev")
	if err != nil {
		return err
	}
	backend := cfg.str("backend")
	if backend != "pkcs11" && backend != "tpm" {
		return fmt.Errorf("--backend %q is not supported (want pkcs11 or tpm)", backend)
	}
	// The simulator's keys live in the daemon's memory (its seed in a
	// file): they would be served, and attested, as hardware keys.
	if backend == "tpm" && cfg.str("tpm") == "sim" && !dev {
		return errors.New("--tpm sim is the in-process TPM simulator, whose keys are not protected by any hardware: it is for --dev only")
	}
	state := cfg.str("state-dir")
	if dev {
		if state == "" {
			return errors.New("--dev needs --state-dir")
		}
		if err := setUpDev(cfg, state, backend, log); err != nil {
			return err
		}
	}
	if state == "" {
		state = "/var/lib/mlskeyd"
	}
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
	mode, err := cfg.fileMode("socket-mode")
	if err != nil {
		return err
	}
	policy, err := loadPolicy(cfg)
	if err != nil {
		return err
	}
	access, err := loadAccess(cfg)
	if err != nil {
		return err
	}
	gid, err := socketGroup(cfg.str("socket-group"))
	if err != nil {
		return err
	}
	lifetime, err := cfg.duration("keypackage-lifetime")
	if err != nil {
		return err
	}
	maxLifetime, err := cfg.duration("keypackage-max-lifetime")
	if err != nil {
		return err
	}
	if lifetime > maxLifetime {
		return fmt.Errorf("--keypackage-lifetime %v is over --keypackage-max-lifetime %v", lifetime, maxLifetime)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The socket is bound before the device is opened: until the device
	// is ready, health answers NOT_SERVING and GetInfo the start-up phase,
	// so that "starting" is not mistaken for "dead".
	svc := server.NewService(nil, server.Options{
		Version: version, Logger: log, DefaultLifetime: lifetime, MaxLifetime: maxLifetime,
		Policy: policy, Access: access,
	})
	svc.SetPhase("opening the device")
	auditPath := cfg.str("audit-log")
	if auditPath == "" {
		auditPath = filepath.Join(state, "audit.log")
	}
	failClosed, err := cfg.bool("audit-fail-closed")
	if err != nil {
		return err
	}
	maxSize, err := cfg.int("audit-max-size")
	if err != nil {
		return err
	}
	// Every record is written with one write(2) as the call happens, so a
	// crash of the daemon loses none. fsync per record, which a machine
	// crash needs, costs a disk flush on every signature: it is what
	// fail_closed buys, and only then is it paid.
	sync := audit.SyncNever
	if failClosed {
		sync = audit.SyncAlways
	}
	alog, err := audit.Open(auditPath, audit.Options{Sync: sync, MaxSize: int64(maxSize), OnError: func(err error) { log.Error("audit log rotation", "err", err) }})
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	// The last hash, kept in the daemon's own log, lets an operator detect
	// a truncated audit log later (see mlskeyctl audit verify).
	log.Info("audit log", "path", auditPath, "fail_closed", failClosed, "last_seq", alog.LastSeq(), "last_hash", alog.LastHash())
	defer func() {
		log.Info("audit log closed", "last_seq", alog.LastSeq(), "last_hash", alog.LastHash())
		alog.Close()
	}()
	gs, hs := server.NewGRPCServer(svc, log, &server.Auditor{Log: alog, FailClosed: failClosed, Logger: log})
	l, err := server.Listen(socket, mode, gid)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	started := false
	defer func() {
		if !started {
			gs.Stop() // closes the listener, which removes the socket
		}
	}()
	log.Info("socket bound; opening the device", "socket", l.Addr().String(), "backend", backend)

	be, err := openBackend(ctx, cfg, getenv, log)
	if err != nil {
		return err
	}
	defer be.Close()
	svc.SetPhase("reconciling the catalog with the device")
	store, err := keystore.Open(ctx, cfg.str("catalog"), be, keystore.Options{MinProtection: policy.KeystoreMinProtection(), Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()
	svc.Ready(store)
	started = true
	go server.WatchDeviceHealth(ctx, store, hs, log)

	info := be.Info()
	log.Info("serving", "socket", l.Addr().String(), "backend", info.Backend, "device", info.Device,
		"catalog", cfg.str("catalog"), "version", version, "dev", dev)
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	hs.Shutdown()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		log.Warn("in-flight requests did not finish in 30s; stopping")
		gs.Stop()
	}
	return nil
}

// openBackend opens the configured device.
func openBackend(ctx context.Context, cfg *settings, getenv func(string) string, log *slog.Logger) (keystore.Backend, error) {
	if cfg.str("backend") == "tpm" {
		timeout, err := cfg.duration("tpm-command-timeout")
		if err != nil {
			return nil, err
		}
		loaded, err := cfg.int("tpm-loaded-keys")
		if err != nil {
			return nil, err
		}
		var seed []byte
		if f := cfg.str("tpm-simulator-seed-file"); f != "" {
			if seed, err = readSecretFile(f); err != nil {
				return nil, err
			}
		}
		return tpm.Open(ctx, tpm.Config{Device: cfg.str("tpm"), SimulatorSeed: seed, CommandTimeout: timeout, LoadedKeys: loaded, Logger: log})
	}
	sessions, err := cfg.int("pkcs11-max-sessions")
	if err != nil {
		return nil, err
	}
	pin, err := readPIN(cfg.str("pkcs11-pin-file"), getenv)
	if err != nil {
		return nil, err
	}
	return pkcs11.Open(ctx, pkcs11.Config{
		Module:      cfg.str("pkcs11-module"),
		TokenLabel:  cfg.str("pkcs11-token"),
		TokenSerial: cfg.str("pkcs11-serial"),
		PIN:         pin,
		MaxSessions: sessions,
		Logger:      log,
	})
}

func newLogger(cfg *settings, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.str("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
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

// loadPolicy reads the config file's "policy" object and adds
// --require-hardware to its minimum protection levels.
func loadPolicy(cfg *settings) (server.Policy, error) {
	var p server.Policy
	if len(cfg.policy) > 0 {
		dec := json.NewDecoder(bytes.NewReader(cfg.policy))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return p, fmt.Errorf("config file: policy: %w", err)
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
	if err != nil {
		return -1, fmt.Errorf("--socket-group: %w", err)
	}
	return strconv.Atoi(g.Gid)
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
