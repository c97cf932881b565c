package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// PeerInfo is the caller's identity as the kernel reports it for the Unix
// socket connection: uid, gid and pid from SO_PEERCRED, supplementary
// groups from SO_PEERGROUPS, and a pidfd from SO_PEERPIDFD, all taken
// when the caller connected. The executable and start time are read from
// /proc. It is what key ownership and admin status are decided on.
//
// Where the kernel lacks SO_PEERGROUPS (before Linux 4.13) the groups are
// read from /proc/PID/status, and where it lacks SO_PEERPIDFD (before
// Linux 6.5) liveness is the PID plus its start time; both are then read
// after the connection was made and are only as good as the check that
// the PID still names the same process.
type PeerInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
	// Groups are the supplementary groups of the process.
	Groups []uint32
	// Exe is the caller's executable ("" when it could not be read).
	Exe string
	// StartTime is the process's start time in clock ticks since boot; with
	// PID it identifies the process even after the PID is reused.
	StartTime uint64

	// pidfd refers to the connecting process itself (nil without
	// SO_PEERPIDFD); it is closed with the connection.
	pidfd *pidFD
}

// Alive reports whether the process that opened the connection still
// runs. With a pidfd the kernel answers for that very process; otherwise
// a PID reused by another process has another start time. Either way a
// connection handed to or outliving its creator is not taken for a new
// process's.
func (p PeerInfo) Alive() bool {
	if p.pidfd != nil {
		return p.pidfd.alive()
	}
	st, err := processStartTime(p.PID)
	return err == nil && st == p.StartTime
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// pidFD is a pidfd that can be checked and closed from different
// goroutines; once closed it reports the process as gone, so a recycled
// descriptor number is never polled.
type pidFD struct {
	mu     sync.Mutex
	fd     int
	closed bool
}

// alive polls the pidfd: it becomes readable when the process exits (a
// zombie counts as exited).
func (p *pidFD) alive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n == 0
	}
}

func (p *pidFD) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		unix.Close(p.fd)
	}
}

// pidfdConn closes the peer's pidfd with the connection.
type pidfdConn struct {
	net.Conn
	pidfd *pidFD
}

func (c *pidfdConn) Close() error {
	c.pidfd.close()
	return c.Conn.Close()
}

// PeerCredentials are gRPC transport credentials that read the peer's
// credentials at connection set-up. They add no encryption: the socket
// never leaves the machine and its file mode decides who may connect.
type PeerCredentials struct{}

var (
	errNotUnix   = errors.New("peercred: connection is not a Unix socket")
	errPeerGone  = errors.New("has exited")
	errNoPeerOpt = errors.New("not supported by this kernel")
)

func (PeerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errNotUnix
	}
	info, err := peerInfo(uc)
	if err != nil {
		return nil, nil, err
	}
	if info.pidfd != nil {
		return &pidfdConn{Conn: c, pidfd: info.pidfd}, info, nil
	}
	return c, info, nil
}

// peerInfo reads the peer's credentials from the socket and what the
// socket does not carry from /proc, and then checks that the process is
// still the one that connected, so nothing read from /proc can belong to
// a process that took over its PID.
func peerInfo(uc *net.UnixConn) (info PeerInfo, err error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return info, err
	}
	var cred *unix.Ucred
	var groups []uint32
	var pidfd = -1
	var credErr, groupsErr, pidfdErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		groups, groupsErr = peerGroups(int(fd))
		pidfd, pidfdErr = peerPidfd(int(fd))
	}); err != nil {
		return info, err
	}
	if credErr != nil {
		return info, fmt.Errorf("peercred: SO_PEERCRED: %w", credErr)
	}
	info = PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
	}
	switch {
	case pidfdErr == nil:
		info.pidfd = &pidFD{fd: pidfd}
		defer func() {
			if err != nil {
				info.pidfd.close()
			}
		}()
	case errors.Is(pidfdErr, unix.ESRCH):
		return info, fmt.Errorf("peercred: process %d %w", cred.Pid, errPeerGone)
	case !errors.Is(pidfdErr, errNoPeerOpt):
		return info, fmt.Errorf("peercred: SO_PEERPIDFD: %w", pidfdErr)
	}
	switch {
	case groupsErr == nil:
		info.Groups = groups
	case errors.Is(groupsErr, errNoPeerOpt):
		info.Groups = processGroups(cred.Pid)
	default:
		return info, fmt.Errorf("peercred: SO_PEERGROUPS: %w", groupsErr)
	}
	info.Exe = processExe(cred.Pid)
	if info.StartTime, err = processStartTime(cred.Pid); err != nil {
		return info, fmt.Errorf("peercred: process %d: %w", cred.Pid, err)
	}
	if info.pidfd != nil && !info.pidfd.alive() {
		return info, fmt.Errorf("peercred: process %d %w", cred.Pid, errPeerGone)
	}
	return info, nil
}

// peerGroups reads SO_PEERGROUPS: the supplementary groups the peer had
// when it connected.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch errno {
		case 0:
			return buf[:n/4], nil
		case unix.ERANGE: // n is now the size needed
			buf = make([]uint32, n/4+1)
		case unix.ENOPROTOOPT:
			return nil, errNoPeerOpt
		default:
			return nil, errno
		}
	}
}

// peerPidfd reads SO_PEERPIDFD: a pidfd for the process that connected.
func peerPidfd(fd int) (int, error) {
	pfd, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return -1, errNoPeerOpt
	}
	return pfd, err
}

func (PeerCredentials) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, nil, nil
}

func (PeerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p PeerCredentials) Clone() credentials.TransportCredentials { return p }

func (PeerCredentials) OverrideServerName(string) error { return nil }

// PeerFromContext returns the caller of a request served over
// PeerCredentials.
func PeerFromContext(ctx context.Context) (PeerInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerInfo{}, false
	}
	info, ok := p.AuthInfo.(PeerInfo)
	return info, ok
}
