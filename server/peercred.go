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
// socket connection (SO_PEERCRED). It is what key ownership is recorded
// against.
type PeerInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// Owner is the owner string recorded in the catalog for keys this caller
// creates.
func (p PeerInfo) Owner() string { return fmt.Sprintf("uid:%d", p.UID) }

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
	return c, PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
	}, nil
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
