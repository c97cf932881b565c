package pkcs11

import (
	"context"
	"os"
	"testing"
)

const testLabel = "mlskeyd-test"

// requireSoftHSM skips when SoftHSM is not installed, unless
// MLSKEYD_REQUIRE_SOFTHSM=1, in which case it fails.
func requireSoftHSM(tb testing.TB) {
	tb.Helper()
	if FindSoftHSM() != "" {
		return
	}
	msg := "SoftHSM 2 module not found at " + softHSMPaths[0] + " or " + softHSMPaths[1] + " (apt-get install softhsm2)"
	if os.Getenv("MLSKEYD_REQUIRE_SOFTHSM") == "1" {
		tb.Fatal(msg + "; MLSKEYD_REQUIRE_SOFTHSM=1 makes this a failure")
	}
	tb.Skip(msg + "; set MLSKEYD_REQUIRE_SOFTHSM=1 to fail instead of skipping")
}

// newToken makes a fresh SoftHSM token in a temporary directory and returns
// a Config that opens it.
func newToken(tb testing.TB) Config {
	tb.Helper()
	requireSoftHSM(tb)
	h, err := InitSoftHSM(tb.TempDir(), testLabel)
	if err != nil {
		tb.Fatal(err)
	}
	pin := RandomPIN()
	if err := h.InitToken(RandomPIN(), pin); err != nil {
		tb.Fatal(err)
	}
	return h.Config(pin)
}

func openBackend(tb testing.TB, cfg Config) *Backend {
	tb.Helper()
	b, err := Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Error(err)
		}
	})
	return b
}
