// Command mlskeyd is the MLS key daemon: it holds MLS signature and HPKE
// private keys in a device and serves MLS-level operations over gRPC on a
// Unix socket. See README.md for the settings.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	policy, err := minProtection(cfg.str("require-hardware"))
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

	be, err := openBackend(ctx, cfg, getenv)
	if err != nil {
		return err
	}
	defer be.Close()
	store, err := keystore.Open(ctx, cfg.str("catalog"), be, keystore.Options{MinProtection: policy, Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()

	svc := server.NewService(store, server.Options{
		Version: version, Logger: log, DefaultLifetime: lifetime, MaxLifetime: maxLifetime,
	})
	gs, hs := server.NewGRPCServer(svc, log)
	l, err := server.Listen(socket, mode)
	if err != nil {
		return err
	}
	info := be.Info()
	log.Info("serving", "socket", l.Addr().String(), "backend", info.Backend, "device", info.Device,
		"catalog", cfg.str("catalog"), "version", version, "dev", dev)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
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
func openBackend(ctx context.Context, cfg *settings, getenv func(string) string) (keystore.Backend, error) {
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
		return tpm.Open(ctx, tpm.Config{Device: cfg.str("tpm"), SimulatorSeed: seed, CommandTimeout: timeout, LoadedKeys: loaded})
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
