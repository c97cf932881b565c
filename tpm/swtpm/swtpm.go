// Package swtpm runs swtpm, the software TPM 2.0 from Debian's swtpm
// package, for tests: on free loopback ports, with its state in a
// directory, stopped when the test ends.
package swtpm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Require returns the swtpm binary. When swtpm is not installed it skips
// the test, or fails it when MLSKEYD_REQUIRE_SWTPM=1 (as scripts/test.sh
// sets, so CI cannot pass by skipping).
func Require(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_SWTPM") == "1" {
			tb.Fatalf("swtpm is required (MLSKEYD_REQUIRE_SWTPM=1) but not installed: %v", err)
		}
		tb.Skip("swtpm not installed (apt-get install swtpm swtpm-tools); set MLSKEYD_REQUIRE_SWTPM=1 to make this a failure")
	}
	return bin
}

// Process is a running swtpm. Its data channel is at Addr (raw TPM
// commands, one client at a time) and its control channel at the next port.
type Process struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
}

// Start starts swtpm with its state in dir and stops it in tb.Cleanup.
func Start(tb testing.TB, dir string) *Process {
	tb.Helper()
	p := &Process{bin: Require(tb), dir: dir}
	for try := 0; ; try++ {
		p.port = freePort(tb)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p.port+1)); err == nil {
			l.Close()
			break
		}
		if try > 20 {
			tb.Fatal("swtpm: no two consecutive free loopback ports")
		}
	}
	p.start(tb)
	tb.Cleanup(p.Stop)
	return p
}

// Addr is the data channel's address.
func (p *Process) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// Device is the address in the form mlskeyd's --tpm takes.
func (p *Process) Device() string { return "tcp://" + p.Addr() }

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (p *Process) start(tb testing.TB) {
	tb.Helper()
	p.cmd = exec.Command(p.bin, "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", p.port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", p.port+1),
		"--tpmstate", "dir="+p.dir,
		"--flags", "not-need-init,startup-clear")
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting swtpm: %v", err)
	}
	// Wait on the control port: probing the data port would take swtpm's
	// only client slot.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port+1), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			p.Stop()
			tb.Fatalf("swtpm did not come up on port %d: %v", p.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops swtpm; its state stays in the directory.
func (p *Process) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
	p.cmd = nil
}

// Kill kills swtpm with SIGKILL, as a crash would: its clients' connections
// break. Its state stays in the directory; Resume starts it again.
func (p *Process) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	p.cmd = nil
}

// Resume starts a killed or stopped swtpm again on the same ports and
// state.
func (p *Process) Resume(tb testing.TB) {
	tb.Helper()
	if p.cmd == nil {
		p.start(tb)
	}
}

// Restart stops swtpm and starts it again on the same ports and state.
func (p *Process) Restart(tb testing.TB) {
	tb.Helper()
	p.Stop()
	p.start(tb)
}

// EKCA is the local certificate authority that issued a manufactured
// swtpm's endorsement key certificates (swtpm_localca's root CA and the
// intermediate that signs EK certificates).
type EKCA struct {
	// Root and Issuer are PEM certificates: the self-signed root and the
	// intermediate under it that signs the EK certificates.
	Root, Issuer []byte
}

// Bundle is the PEM bundle a verifier would be given as trusted EK CAs:
// the root and the intermediate.
func (ca *EKCA) Bundle() []byte { return append(append([]byte(nil), ca.Root...), ca.Issuer...) }

// StartManufactured runs swtpm_setup (from swtpm-tools) on a new state in
// dir, as a TPM vendor would: it creates the RSA 2048 and ECC endorsement
// keys and certificates for them in NV, issued by a new local CA kept in
// dir too, and then starts swtpm on that state. Skipped or failed like
// Start when the tools are missing.
func StartManufactured(tb testing.TB, dir string) (*Process, *EKCA) {
	tb.Helper()
	Require(tb)
	setup := requireTool(tb, "swtpm_setup")
	localca := requireTool(tb, "swtpm_localca")
	state, caDir := filepath.Join(dir, "state"), filepath.Join(dir, "ca")
	for _, d := range []string{state, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	caConf := filepath.Join(dir, "swtpm-localca.conf")
	setupConf := filepath.Join(dir, "swtpm_setup.conf")
	opts := filepath.Join(dir, "swtpm-localca.options")
	files := map[string]string{
		caConf: fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir),
		opts:   "--platform-manufacturer mlskeyd-test\n--platform-version 2.1\n--platform-model swtpm\n",
		setupConf: fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			localca, caConf, opts),
	}
	for f, body := range files {
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	cmd := exec.Command(setup, "--tpm2", "--tpmstate", state, "--create-ek-cert",
		"--config", setupConf, "--logfile", filepath.Join(dir, "swtpm_setup.log"))
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "swtpm_setup.log"))
		tb.Fatalf("swtpm_setup: %v\n%s%s", err, out, log)
	}
	ca := &EKCA{}
	var err error
	if ca.Root, err = os.ReadFile(filepath.Join(caDir, "swtpm-localca-rootca-cert.pem")); err != nil {
		tb.Fatal(err)
	}
	if ca.Issuer, err = os.ReadFile(filepath.Join(caDir, "issuercert.pem")); err != nil {
		tb.Fatal(err)
	}
	return Start(tb, state), ca
}

func requireTool(tb testing.TB, name string) string {
	tb.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_SWTPM") == "1" {
			tb.Fatalf("%s is required (MLSKEYD_REQUIRE_SWTPM=1) but not installed: %v", name, err)
		}
		tb.Skipf("%s not installed (apt-get install swtpm-tools); set MLSKEYD_REQUIRE_SWTPM=1 to make this a failure", name)
	}
	return bin
}
