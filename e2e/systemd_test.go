package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/client"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
)

// activated is mlskeyd started by systemd-socket-activate, which binds the
// socket, waits for the first connection and then execs the daemon with
// LISTEN_FDS, as systemd does for mlskeyd.socket. NOTIFY_SOCKET points at
// a datagram socket the test reads, as systemd reads it for Type=notify.
type activated struct {
	*daemon
	notify *net.UnixConn
}

func startActivated(t *testing.T, state string, args ...string) *activated {
	t.Helper()
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_SYSTEMD") == "1" {
			t.Fatal("systemd-socket-activate is missing (scripts/test.sh installs the systemd package)")
		}
		t.Skip("systemd-socket-activate not installed")
	}
	dir, err := os.MkdirTemp("", "mlskeyd-sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "mlskeyd.sock")
	notifyPath := filepath.Join(dir, "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	d := &daemon{t: t, state: state, socket: sock, log: new(syncBuffer), exited: make(chan error, 1)}
	full := append([]string{"-l", sock, "-E", "NOTIFY_SOCKET=" + notifyPath,
		filepath.Join(binDir, "mlskeyd"), "--dev", "--state-dir", state, "--log-level", "debug"}, args...)
	d.cmd = exec.Command(ssa, full...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.Env = cleanEnv()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop() })
	a := &activated{daemon: d, notify: nc}
	// The socket exists before the daemon runs: the first connection
	// starts it, and waits for it instead of failing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-socket-activate did not bind\n%s", d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, errOut, code := d.ctl("status")
	if code != 0 {
		t.Fatalf("status through the activated socket: %s%s\n%s", out, errOut, d.log)
	}
	// systemd's status line follows the start-up phases, and READY=1
	// comes once the catalog is reconciled with the device.
	a.expect("STATUS=opening the device")
	a.expect("STATUS=reconciling the catalog with the device")
	a.expect("READY=1")
	return a
}

// expect reads notifications until one carries want.
func (a *activated) expect(want string) string {
	a.t.Helper()
	buf := make([]byte, 4096)
	a.notify.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, err := a.notify.Read(buf)
		if err != nil {
			a.t.Fatalf("waiting for %s from the daemon: %v\n%s", want, err, a.log)
		}
		msg := string(buf[:n])
		if strings.Contains("\n"+msg, "\n"+want+"\n") {
			return msg
		}
	}
}

func TestSocketActivationAndNotify(t *testing.T) {
	a := startActivated(t, t.TempDir())
	if !strings.Contains(a.log.String(), "socket activated") {
		t.Fatalf("daemon did not say it took the socket from systemd\n%s", a.log)
	}
	c := a.client()
	if _, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: 2}); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a.expect("STOPPING=1")
	select {
	case err := <-a.exited:
		a.exited <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, a.log)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", a.log)
	}
	// The socket is systemd's: it stays for the next activation.
	if fi, err := os.Stat(a.socket); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket unit's socket removed by the daemon: %v", err)
	}
}

// A socket that is not what mlskeyd.socket makes is refused with a hint.
func TestSocketActivationRefusesDatagram(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed")
	}
	dir, err := os.MkdirTemp("", "mlskeyd-sd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "dgram.sock")
	cmd := exec.Command(ssa, "--datagram", "-l", sock, filepath.Join(binDir, "mlskeyd"), "--dev", "--state-dir", filepath.Join(dir, "state"))
	cmd.Env = cleanEnv()
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not bound\n%s", out.String())
		}
	}
	// A datagram wakes it.
	c, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	c.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(out.String(), "not a stream socket") {
			t.Fatalf("exit %v, output:\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon kept running on a datagram socket\n%s", out.String())
	}
}

// SIGHUP reads the policy again and reopens the audit log after logrotate
// renamed it, while clients keep calling: no call fails, each reload is
// acknowledged to systemd (RELOADING=1, then READY=1) and audited, and the
// audit chain runs on through the renamed files.
func TestSIGHUPReloadsPolicyAndReopensAudit(t *testing.T) {
	state := t.TempDir()
	cfgPath := filepath.Join(t.TempDir(), "mlskeyd.json")
	writePolicy := func(policy string) {
		if err := os.WriteFile(cfgPath, []byte(`{"policy": `+policy+`}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePolicy(`{"allowed_suites": [1, 2]}`)
	a := startActivated(t, state, "--config", cfgPath)
	c := a.client()
	ctx := context.Background()
	key, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	if err != nil {
		t.Fatal(err)
	}
	content := tbs(t, "FramedContentTBS", 2, key.GetPublicKey(), "reload")

	// Callers on their own connections, signing all through the reloads.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var callErrs []error
	calls := 0
	for range 4 {
		cl, err := client.Dial(ctx, a.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := cl.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: key.GetId(), Label: "FramedContentTBS", Content: content})
				mu.Lock()
				calls++
				if err != nil {
					callErrs = append(callErrs, err)
				}
				mu.Unlock()
			}
		}()
	}
	auditPath := filepath.Join(state, "audit.log")
	var rotated []string
	hup := func() {
		t.Helper()
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		a.expect("RELOADING=1")
		a.expect("READY=1")
	}
	for i := 3; i >= 1; i-- {
		// logrotate: rename, then signal.
		name := auditPath + "." + string(rune('0'+i))
		if err := os.Rename(auditPath, name); err != nil {
			t.Fatal(err)
		}
		rotated = append(rotated, name)
		hup()
		time.Sleep(100 * time.Millisecond) // let the callers write into the new file
	}
	// The new policy applies to the next call.
	writePolicy(`{"allowed_suites": [1]}`)
	hup()
	_, err = c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	wantCode(t, "suite 2 after the reload", err, codes.PermissionDenied, "cipher_suite")
	// A policy that does not parse is refused; the one in force stays.
	writePolicy(`{"allowed_suites": [99]}`)
	hup()
	_, err = c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	wantCode(t, "suite 2 after a refused reload", err, codes.PermissionDenied, "cipher_suite")
	if _, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1}); err != nil {
		t.Fatalf("suite 1 after a refused reload: %v", err)
	}
	close(stop)
	wg.Wait()
	if len(callErrs) > 0 || calls == 0 {
		t.Fatalf("%d of %d calls failed during reloads, first: %v", len(callErrs), calls, callErrs)
	}
	a.stop()

	files := append(rotated, auditPath)
	rep, err := audit.Verify(files...)
	if err != nil {
		t.Fatalf("audit chain across logrotate's files: %v", err)
	}
	var reloads, failed int
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v, empty: the daemon did not write into the reopened file", f, err)
		}
		for _, r := range readAudit(t, f) {
			if r.Operation == "Reload" {
				reloads++
				if r.Outcome != audit.OutcomeOK {
					failed++
					if !strings.Contains(r.Reason, "policy.allowed_suites") {
						t.Errorf("failed reload's reason %q does not name the field", r.Reason)
					}
				}
			}
		}
	}
	if reloads != 5 || failed != 1 {
		t.Fatalf("%d Reload records, %d failed; want 5 and 1", reloads, failed)
	}
	t.Logf("%d calls during 5 reloads, %d audit records in %d files", calls, rep.Records, len(files))
}

// The units in contrib/systemd pass systemd-analyze verify with nothing to
// say (an unknown or misspelt directive is only a warning there, so any
// output fails), and agree with the daemon on the socket path.
func TestSystemdUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("MLSKEYD_REQUIRE_SYSTEMD") == "1" {
			t.Fatal("systemd-analyze is missing (scripts/test.sh installs the systemd package)")
		}
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	var units []string
	for _, name := range []string{"mlskeyd.socket", "mlskeyd.service"} {
		b, err := os.ReadFile(filepath.Join("..", "contrib", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if name == "mlskeyd.service" {
			// verify checks that ExecStart's binary exists: use the one
			// just built in place of the installed one.
			if !strings.Contains(text, "ExecStart=/usr/local/bin/mlskeyd ") {
				t.Fatal("ExecStart is not /usr/local/bin/mlskeyd, which README installs")
			}
			text = strings.ReplaceAll(text, "/usr/local/bin/mlskeyd", filepath.Join(binDir, "mlskeyd"))
			for _, want := range []string{"Type=notify", "StateDirectory=mlskeyd", "RuntimeDirectory=mlskeyd",
				"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "RestrictAddressFamilies=AF_UNIX",
				"DeviceAllow=/dev/tpmrm0 rw", "User=mlskeyd", "ExecReload=/bin/kill -HUP $MAINPID"} {
				if !strings.Contains(text, "\n"+want+"\n") {
					t.Errorf("mlskeyd.service lacks %s", want)
				}
			}
		} else if !strings.Contains(text, "\nListenStream=/run/mlskeyd/mlskeyd.sock\n") {
			t.Error("mlskeyd.socket does not listen on /run/mlskeyd/mlskeyd.sock, the daemon's and mlskeyctl's default")
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, units...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
