package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/mlskeyd/mlskeyd/pkcs11"
)

const devTokenLabel = "mlskeyd-dev"

// setUpDev prepares --dev mode: defaults for the socket and catalog inside
// state, and the device: for pkcs11 a private SoftHSM configuration and
// token inside state with a random PIN in state/pin (mode 0600); for tpm,
// unless --tpm names one, the in-process simulator with its seed in
// state/tpm-simulator-seed. Everything is created only when missing, so a
// restart on the same directory keeps every key. release, never nil, is
// to be called once the device is open: until then dev mode keeps SoftHSM
// initialised, so that opening the device does not load the token again.
func setUpDev(cfg *settings, state, backend string, log *slog.Logger) (release func(), err error) {
	release = func() {}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return release, fmt.Errorf("state directory: %w", err)
	}
	defaults := map[string]string{
		"socket":  filepath.Join(state, "mlskeyd.sock"),
		"catalog": filepath.Join(state, "catalog.db"),
	}
	if backend == "tpm" {
		err = setUpDevTPM(cfg, state, defaults)
	} else {
		release, err = setUpDevSoftHSM(state, defaults, log)
	}
	if err != nil {
		return release, err
	}
	for name, v := range defaults {
		if st := cfg.byName[name]; st.from == "default" {
			st.value = v
		}
	}
	return release, nil
}

func setUpDevTPM(cfg *settings, state string, defaults map[string]string) error {
	if cfg.byName["tpm"].from != "default" && cfg.str("tpm") != "sim" {
		return nil // a real or swtpm TPM: dev mode only supplies paths
	}
	seedFile := filepath.Join(state, "tpm-simulator-seed")
	if _, err := os.Stat(seedFile); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(seedFile, []byte(randomHex(32)+"\n"), 0o600); err != nil {
			return err
		}
	}
	defaults["tpm"] = "sim"
	defaults["tpm-simulator-seed-file"] = seedFile
	return nil
}

func setUpDevSoftHSM(state string, defaults map[string]string, log *slog.Logger) (release func(), err error) {
	release = func() {}
	defer func() {
		if err != nil {
			release()
		}
	}()
	hsm, err := pkcs11.InitSoftHSM(filepath.Join(state, "softhsm"), devTokenLabel)
	if err != nil {
		return release, fmt.Errorf("dev mode needs SoftHSM (apt-get install softhsm2): %w", err)
	}
	// The PIN files are written before the token exists and the token is
	// initialised whenever it is missing, so a crash at any point leaves a
	// state directory the next start completes. The SO PIN is kept beside
	// the user PIN so the token can be administered with softhsm2-util;
	// both are dev-only secrets.
	pinFile, soFile := filepath.Join(state, "pin"), filepath.Join(state, "so-pin")
	if _, err := os.Stat(pinFile); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(soFile, []byte(pkcs11.RandomPIN()+"\n"), 0o600); err != nil {
			return release, err
		}
		if err := os.WriteFile(pinFile, []byte(pkcs11.RandomPIN()+"\n"), 0o600); err != nil {
			return release, err
		}
	}
	pin, err := readPIN(pinFile, os.Getenv)
	if err != nil {
		return release, err
	}
	so, err := readPIN(soFile, os.Getenv)
	if err != nil {
		return release, err
	}
	// SoftHSM loads every object of the token at C_Initialize: held from
	// here until the device is open, it does so once per start, not twice.
	hold, err := hsm.Hold()
	if err != nil {
		return release, fmt.Errorf("dev mode: %w", err)
	}
	release = hold
	switch err := hsm.InitToken(so, pin); {
	case err == nil:
		// A new token is opened after a fresh initialisation, as any
		// other: it is empty, so that costs nothing.
		release()
		log.Info("dev mode: created SoftHSM token", "label", devTokenLabel, "pin_file", pinFile)
	case !errors.Is(err, pkcs11.ErrTokenExists):
		return release, fmt.Errorf("initialise dev token: %w", err)
	}
	defaults["pkcs11-module"] = hsm.Module
	defaults["pkcs11-token"] = devTokenLabel
	defaults["pkcs11-pin-file"] = pinFile
	return release, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
