package tpm

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

// tpmEnv is one TPM the tests run against.
type tpmEnv struct {
	name string
	cfg  Config
	// restart restarts the TPM process with its state kept (swtpm), or
	// does nothing (the simulator keeps no state but its seed).
	restart func(t testing.TB)
	// foreign returns the Config of a different TPM, whose SRK differs.
	foreign func(t testing.TB) Config
}

func (e *tpmEnv) open(t testing.TB) *Backend {
	t.Helper()
	return openCfg(t, e.cfg)
}

func openCfg(t testing.TB, cfg Config) *Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.Device, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// eachTPM runs f against the in-process simulator and against swtpm. The
// swtpm run is skipped when swtpm is not installed, unless
// MLSKEYD_REQUIRE_SWTPM=1. The simulator is one per process, so the runs
// are sequential and a test must Close a simulator Backend before opening
// another.
func eachTPM(t *testing.T, f func(t *testing.T, env *tpmEnv)) {
	t.Run("sim", func(t *testing.T) { f(t, simEnv(t)) })
	t.Run("swtpm", func(t *testing.T) { f(t, swtpmEnv(t)) })
}

func eachTPMBench(b *testing.B, f func(b *testing.B, env *tpmEnv)) {
	b.Run("sim", func(b *testing.B) { f(b, simEnv(b)) })
	b.Run("swtpm", func(b *testing.B) { f(b, swtpmEnv(b)) })
}

func randomSeed(t testing.TB) []byte {
	seed := make([]byte, 16)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	return seed
}

func simEnv(t testing.TB) *tpmEnv {
	return &tpmEnv{
		name:    "sim",
		cfg:     Config{Device: "sim", SimulatorSeed: randomSeed(t)},
		restart: func(testing.TB) {},
		foreign: func(t testing.TB) Config { return Config{Device: "sim", SimulatorSeed: randomSeed(t)} },
	}
}

func swtpmEnv(t testing.TB) *tpmEnv {
	s := swtpm.Start(t, t.TempDir())
	return &tpmEnv{
		name:    "swtpm",
		cfg:     Config{Device: s.Device()},
		restart: s.Restart,
		foreign: func(t testing.TB) Config { return Config{Device: swtpm.Start(t, t.TempDir()).Device()} },
	}
}
