package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: the master the test reads and writes,
// the terminal a child gets as stderr (and stdin).
func openPTY(t *testing.T) (master, term *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	return master, term
}

// onTerminal runs mlskeyctl with stderr (and stdin, when answer is set) on
// a real terminal, as a user at a shell has it, and stdout on a pipe. When
// answer is set it is typed once the terminal shows a [y/N] question.
// It returns stdout, what the terminal showed, and the exit code.
func (d *daemon) onTerminal(t *testing.T, answer string, args ...string) (string, string, int) {
	t.Helper()
	master, term := openPTY(t)
	cmd := exec.Command(filepath.Join(binDir, "mlskeyctl"), append([]string{"--socket", d.socket}, args...)...)
	cmd.Env = cleanEnv()
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, term
	if answer != "" {
		cmd.Stdin = term
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	term.Close() // the child holds it now; its exit ends the master's reads
	shown := new(syncBuffer)
	read := make(chan struct{})
	go func() {
		io.Copy(shown, master) // ends with EIO once no one holds the terminal
		close(read)
	}()
	if answer != "" {
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(shown.String(), "[y/N] ") {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("mlskeyctl %q asked nothing; the terminal shows %q", args, shown)
			}
			time.Sleep(20 * time.Millisecond)
		}
		master.WriteString(answer)
	}
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mlskeyctl: %v", err)
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatalf("the terminal stayed open after mlskeyctl %q exited", args)
	}
	return stdout.String(), shown.String(), code
}

// TestOnARealTerminal: what mlskeyctl does because stderr or stdin is a
// terminal, on a real one (a pseudo-terminal) rather than the flag the
// unit tests set: keypackage create draws its progress bar there and
// erases it, stdout stays as without a terminal, --json draws nothing; key
// delete asks and keeps the key on "n", deletes it on "y".
func TestOnARealTerminal(t *testing.T) {
	d := startDaemon(t, t.TempDir())

	out, shown, code := d.onTerminal(t, "", "keypackage", "create", "--suite", "1", "--identity", "tty", "--count", "30")
	if code != 0 {
		t.Fatalf("keypackage create on a terminal: exit %d, terminal %q", code, shown)
	}
	if !strings.Contains(shown, "\rcreating KeyPackages [") || !strings.Contains(shown, "] 100%") || !strings.HasSuffix(shown, "\r\x1b[K") {
		t.Fatalf("keypackage create on a terminal showed %q, want a bar ending at 100%% and erased", shown)
	}
	if out == "" || strings.Contains(out, "creating KeyPackages") || strings.Contains(out, "\x1b") {
		t.Fatalf("keypackage create on a terminal: stdout %q", out)
	}
	plain, errOut, code := d.ctl("keypackage", "create", "--suite", "1", "--identity", "tty", "--count", "30")
	if code != 0 || errOut != "" || strings.Count(plain, "\n") != strings.Count(out, "\n") {
		t.Fatalf("stdout differs without a terminal: %d lines, with one %d (%s)", strings.Count(plain, "\n"), strings.Count(out, "\n"), errOut)
	}
	if _, shown, code := d.onTerminal(t, "", "keypackage", "create", "--suite", "1", "--identity", "tty", "--count", "30", "--json"); code != 0 || shown != "" {
		t.Fatalf("keypackage create --json on a terminal: exit %d, terminal %q", code, shown)
	}

	var k keyJSON
	d.ctlJSON(t, &k, "key", "create", "--suite", "1")
	_, shown, code = d.onTerminal(t, "n\n", "key", "delete", k.ID)
	if code == 0 || !strings.Contains(shown, "Delete signature key "+k.ID) || !strings.Contains(shown, "not confirmed; key "+k.ID+" is unchanged") {
		t.Fatalf("key delete answered n: exit %d, terminal %q", code, shown)
	}
	var got keyJSON
	d.ctlJSON(t, &got, "key", "show", k.ID)
	if got.State != "active" {
		t.Fatalf("key %s after a delete answered n: %s", k.ID, got.State)
	}
	out, shown, code = d.onTerminal(t, "y\n", "key", "delete", k.ID)
	if code != 0 || !strings.Contains(out, k.ID) {
		t.Fatalf("key delete answered y: exit %d, stdout %q, terminal %q", code, out, shown)
	}
	d.ctlJSON(t, &got, "key", "show", k.ID)
	if got.State != "destroyed" {
		t.Fatalf("key %s after a delete answered y: %s", k.ID, got.State)
	}
}
