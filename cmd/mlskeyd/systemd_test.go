package main

import (
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSystemdListenerOnlyForThisProcess(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	// Variables inherited from a parent that was activated are not ours.
	l, err := systemdListener(env(map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1"}), os.Getpid())
	if l != nil || err != nil {
		t.Fatalf("took another process's socket: %v %v", l, err)
	}
	if l, err := systemdListener(env(map[string]string{}), os.Getpid()); l != nil || err != nil {
		t.Fatalf("no activation: %v %v", l, err)
	}
	pid := os.Getpid()
	_, err = systemdListener(env(map[string]string{"LISTEN_PID": itoa(pid), "LISTEN_FDS": "2"}), pid)
	if err == nil || !strings.Contains(err.Error(), "passed 2 sockets") {
		t.Fatalf("two sockets: %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestNotifierAbstractSocket(t *testing.T) {
	name := "mlskeyd-test-notify-" + itoa(os.Getpid())
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "\x00" + name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", "@"+name)
	n := newNotifier(os.Getenv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if os.Getenv("NOTIFY_SOCKET") != "" {
		t.Fatal("NOTIFY_SOCKET left for child processes")
	}
	n.reloading()
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	msg := string(buf[:k])
	if !strings.HasPrefix(msg, "RELOADING=1\n") || !strings.Contains(msg, "\nMONOTONIC_USEC=") {
		t.Fatalf("notification %q", msg)
	}
	// Without NOTIFY_SOCKET nothing is sent and nothing fails.
	(&notifier{}).ready("x")
	var nilNotifier *notifier
	nilNotifier.stopping()
}

// The example config in contrib/ is what README's service section installs:
// it must load as it is.
func TestContribConfigLoads(t *testing.T) {
	cfg := newSettings()
	if err := cfg.parse([]string{"--config", "../../contrib/mlskeyd.json"}, func(string) string { return "" }, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPolicy(cfg); err != nil {
		t.Fatal(err)
	}
	pc, pinFile, err := pkcs11Selection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pc.TokenLabel != "mlskeyd" || pinFile != "/etc/mlskeyd/pin" || pc.Module == "" {
		t.Fatalf("token %+v, PIN file %q", pc, pinFile)
	}
	if cfg.str("audit-log") != "/var/log/mlskeyd/audit.log" {
		t.Fatalf("audit log %q: the unit's LogsDirectory is /var/log/mlskeyd", cfg.str("audit-log"))
	}
}
