package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlskeyd/mlskeyd/server"
)

// The systemd protocols are small enough to speak directly: socket
// activation is three environment variables and inherited descriptors
// from 3 on (sd_listen_fds(3)), readiness is a datagram to NOTIFY_SOCKET
// (sd_notify(3)).

// listenFDsStart is SD_LISTEN_FDS_START.
const listenFDsStart = 3

// listen returns the listener systemd passed when the daemon is socket
// activated, and otherwise creates the socket itself. With systemd's
// socket, its path, mode and group are the socket unit's, and systemd, not
// the daemon, removes it.
func listen(socket string, mode fs.FileMode, gid int, log *slog.Logger) (net.Listener, error) {
	l, err := systemdListener(os.Getenv, os.Getpid())
	if err != nil {
		return nil, err
	}
	if l != nil {
		log.Info("socket activated: serving on the socket systemd passed", "socket", l.Addr().String())
		return l, nil
	}
	return server.Listen(socket, mode, gid)
}

// systemdListener takes the Unix stream socket systemd passed, or returns
// nil when none was passed to this process. The variables are removed so
// that no child process (a PKCS#11 module may start one) takes them as its
// own.
func systemdListener(getenv func(string) string, pid int) (net.Listener, error) {
	pidVar, fdsVar := getenv("LISTEN_PID"), getenv("LISTEN_FDS")
	if fdsVar == "" {
		return nil, nil
	}
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	// LISTEN_PID names the process the descriptors are meant for; a
	// daemon that merely inherited the environment must not take them.
	if p, err := strconv.Atoi(pidVar); err != nil || p != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(fdsVar)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a positive number", fdsVar)
	}
	if n != 1 {
		return nil, fmt.Errorf("socket activation: systemd passed %d sockets; mlskeyd takes one (a single ListenStream= in mlskeyd.socket)", n)
	}
	fd := listenFDsStart
	unix.CloseOnExec(fd)
	if err := checkListeningUnixStream(fd); err != nil {
		return nil, fmt.Errorf("socket activation: descriptor %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(fd), "systemd-socket")
	defer f.Close() // FileListener dups it
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	return l, nil
}

// checkListeningUnixStream refuses anything but a listening AF_UNIX stream
// socket: the caller identity checks rest on SO_PEERCRED, which only Unix
// sockets have.
func checkListeningUnixStream(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if domain != unix.AF_UNIX {
		return errors.New("not a Unix socket (use ListenStream=/run/mlskeyd/mlskeyd.sock in mlskeyd.socket)")
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return err
	}
	if typ != unix.SOCK_STREAM {
		return errors.New("not a stream socket (use ListenStream=, not ListenDatagram= or ListenSequentialPacket=)")
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return err
	}
	if acc == 0 {
		return errors.New("not listening (mlskeyd.socket must not set Accept=yes)")
	}
	return nil
}

// notifier tells the service manager how the daemon is doing. Without
// NOTIFY_SOCKET (not started by systemd with Type=notify) it does nothing.
type notifier struct {
	addr *net.UnixAddr
	log  *slog.Logger
}

func newNotifier(getenv func(string) string, log *slog.Logger) *notifier {
	n := &notifier{log: log}
	path := getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	switch {
	case path == "":
	case strings.HasPrefix(path, "@"):
		// An abstract socket: the name's leading NUL is written as '@'.
		n.addr = &net.UnixAddr{Name: "\x00" + path[1:], Net: "unixgram"}
	case strings.HasPrefix(path, "/"):
		n.addr = &net.UnixAddr{Name: path, Net: "unixgram"}
	default:
		log.Warn("NOTIFY_SOCKET is neither a path nor an abstract socket; not notifying systemd", "notify_socket", path)
	}
	return n
}

// send writes one notification; systemd reads the whole datagram, one
// VAR=value per line.
func (n *notifier) send(lines ...string) {
	if n == nil || n.addr == nil {
		return
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		_, err = c.Write([]byte(strings.Join(lines, "\n") + "\n"))
		c.Close()
	}
	if err != nil {
		n.log.Warn("cannot notify systemd", "err", err)
	}
}

func (n *notifier) ready(status string) { n.send("READY=1", "STATUS="+status) }

// status sets the line systemctl status shows, for start-up phases.
func (n *notifier) status(status string) { n.send("STATUS=" + status) }

// reloading starts a reload; systemd wants the monotonic clock with it
// (sd_notify(3), RELOADING=1) and READY=1 when the reload is over.
func (n *notifier) reloading() {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Nano() / int64(time.Microsecond)
	n.send("RELOADING=1", "STATUS=reloading", "MONOTONIC_USEC="+strconv.FormatInt(usec, 10))
}

func (n *notifier) stopping() { n.send("STOPPING=1", "STATUS=shutting down") }
