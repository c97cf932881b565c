package server

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// PeerInfo is the caller's identity as the kernel reports it for the Unix
// socket connection (SO_PEERCRED), with the executable and start time of
// the process read from /proc when the connection was made. It is what key
// ownership is recorded against.
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
}

// Alive reports whether the process that opened the connection still
// runs. A PID reused by another process has another start time, so a
// connection handed to or outliving its creator is not taken for the new
// process's.
func (p PeerInfo) Alive() bool {
	st, err := processStartTime(p.PID)
	return err == nil && st == p.StartTime
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// PeerCredentials are gRPC transport credentials that read SO_PEERCRED at
// connection set-up. They add no encryption: the socket never leaves the
// machine and its file mode decides who may connect.
type PeerCredentials struct{}

var errNotUnix = errors.New("peercred: connection is not a Unix socket")

func (PeerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if serr != nil {
		return nil, nil, fmt.Errorf("peercred: SO_PEERCRED: %w", serr)
	}
	info := PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
		Exe: processExe(cred.Pid), Groups: processGroups(cred.Pid),
	}
	if info.StartTime, err = processStartTime(cred.Pid); err != nil {
		return nil, nil, fmt.Errorf("peercred: process %d: %w", cred.Pid, err)
	}
	return c, info, nil
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
