package tpm

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
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
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_SWTPM") == "1" {
			t.Fatalf("swtpm is required (MLSKEYD_REQUIRE_SWTPM=1) but not installed: %v", err)
		}
		t.Skip("swtpm not installed (apt-get install swtpm swtpm-tools); set MLSKEYD_REQUIRE_SWTPM=1 to make this a failure")
	}
	s := startSwtpm(t, bin, t.TempDir())
	return &tpmEnv{
		name:    "swtpm",
		cfg:     Config{Device: "tcp://" + s.addr},
		restart: s.restart,
		foreign: func(t testing.TB) Config {
			o := startSwtpm(t, bin, t.TempDir())
			return Config{Device: "tcp://" + o.addr}
		},
	}
}

type swtpm struct {
	bin, dir string
	port     int
	addr     string
	cmd      *exec.Cmd
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startSwtpm starts swtpm on a free loopback port P (data) and P+1
// (control) with its state in dir, and stops it in t.Cleanup.
func startSwtpm(t testing.TB, bin, dir string) *swtpm {
	t.Helper()
	s := &swtpm{bin: bin, dir: dir}
	for try := 0; ; try++ {
		s.port = freePort(t)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.port+1)); err == nil {
			l.Close()
			break
		}
		if try > 20 {
			t.Fatal("no two consecutive free loopback ports")
		}
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", s.port)
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

func (s *swtpm) start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command(s.bin, "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port+1),
		"--tpmstate", "dir="+s.dir,
		"--flags", "not-need-init,startup-clear")
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	// Wait for the control port: probing the data port would take swtpm's
	// one client slot away from the test (it serves one at a time).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port+1), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.stop()
			t.Fatalf("swtpm did not come up on port %d: %v", s.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *swtpm) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

func (s *swtpm) restart(t testing.TB) {
	t.Helper()
	s.stop()
	s.start(t)
}
