// Package e2e tests the real mlskeyd and mlskeyctl binaries against SoftHSM,
// and their interoperability with an independent MLS implementation (ts-mls).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

var binDir string

func TestMain(m *testing.M) {
	if pkcs11.FindSoftHSM() == "" {
		if os.Getenv("MLSKEYD_REQUIRE_SOFTHSM") == "1" {
			fmt.Fprintln(os.Stderr, "e2e: SoftHSM is required but not installed")
			os.Exit(1)
		}
		fmt.Println("e2e: SoftHSM not installed; skipping (scripts/test.sh installs it)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "mlskeyd-e2e-bin")
	if err != nil {
		panic(err)
	}
	// Tests run the race-enabled binaries; benchmarks (MLSKEYD_BENCH=1, as
	// scripts/bench.sh sets) the ordinary ones users run.
	race := "-race"
	if os.Getenv("MLSKEYD_BENCH") == "1" {
		race = "-race=false"
	}
	build := exec.Command("go", "build", race, "-o", dir, "../cmd/mlskeyd", "../cmd/mlskeyctl")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a running mlskeyd in dev mode.
type daemon struct {
	t      testing.TB
	state  string
	socket string
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan error
}

func startDaemon(t testing.TB, state string, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, state, nil, args...)
}

// startDaemonEnv is startDaemon with env added to the daemon's environment.
func startDaemonEnv(t testing.TB, state string, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, state: state, socket: filepath.Join(state, "mlskeyd.sock"), log: new(syncBuffer), exited: make(chan error, 1)}
	for i, a := range args {
		if a == "--socket" && i+1 < len(args) {
			d.socket = args[i+1]
		}
	}
	// Tests log every call; benchmarks measure the daemon as it runs by
	// default.
	level := "debug"
	if _, bench := t.(*testing.B); bench {
		level = "info"
	}
	d.cmd = exec.Command(filepath.Join(binDir, "mlskeyd"), append([]string{"--dev", "--state-dir", state, "--log-level", level}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.Env = append(cleanEnv(), env...)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-d.exited:
			d.exited <- err
			t.Fatalf("mlskeyd exited at start-up: %v\n%s", err, d.log)
		default:
		}
		// The socket answers while the daemon still opens the device
		// (device_state "starting"): wait for the device.
		if out, _, code := d.ctl("status", "--json"); code == 0 {
			var st struct {
				DeviceState string `json:"device_state"`
			}
			if json.Unmarshal([]byte(out), &st) == nil && st.DeviceState != "starting" {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("mlskeyd did not start serving\n%s", d.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanEnv keeps the daemon from inheriting settings of the test runner.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MLSKEYD_") && !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			env = append(env, kv)
		}
	}
	return env
}

// stop sends SIGTERM and waits; it is a no-op once the daemon has exited.
func (d *daemon) stop() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("mlskeyd did not stop on SIGTERM\n%s", d.log)
	}
}

func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
}

// ctl runs mlskeyctl against the daemon: stdout, stderr, exit code.
func (d *daemon) ctl(args ...string) (string, string, int) {
	return d.ctlIn(nil, args...)
}

func (d *daemon) ctlIn(stdin []byte, args ...string) (string, string, int) {
	return d.run(nil, stdin, args...)
}

// run runs mlskeyctl, as another user when cred is set.
func (d *daemon) run(cred *syscall.Credential, stdin []byte, args ...string) (string, string, int) {
	cmd := exec.Command(filepath.Join(binDir, "mlskeyctl"), append([]string{"--socket", d.socket}, args...)...)
	cmd.Env = cleanEnv()
	if cred != nil {
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("mlskeyctl: %v", err)
	}
	return out.String(), errb.String(), code
}

// ctlJSON runs mlskeyctl --json and decodes its output into v, failing the
// test on a non-zero exit.
func (d *daemon) ctlJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out, errOut, code := d.ctl(append(args, "--json")...)
	if code != 0 {
		t.Fatalf("mlskeyctl %v: exit %d: %s", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("mlskeyctl %v: bad JSON %q: %v", args, out, err)
	}
}

func (d *daemon) client() pb.KeyServiceClient {
	c, err := client.Dial(context.Background(), d.socket)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { c.Close() })
	return c.KeyServiceClient
}

// startDaemonExpectFailure runs a daemon that must exit with an error at
// start-up and returns what it printed.
func startDaemonExpectFailure(t *testing.T, state string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "mlskeyd"), append([]string{"--dev", "--state-dir", state}, args...)...)
	cmd.Env = cleanEnv()
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("mlskeyd did not exit\n%s", out)
	}
	if err == nil {
		t.Fatalf("mlskeyd exited 0\n%s", out)
	}
	return string(out)
}

// syncBuffer collects the daemon's output; tests read it while the daemon
// still writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
