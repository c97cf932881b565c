package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/client"
)

// localError is an error of mlskeyctl itself with a code for --json.
type localError struct {
	code, field, msg string
}

func (e *localError) Error() string { return e.msg }

// connectError says in one line why the daemon's socket could not be
// reached, with what to do about it.
func connectError(sock string, err error) error {
	var reason, hint string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		reason = "no such socket"
		hint = "is mlskeyd running? see --socket and " + client.SocketEnv
	case errors.Is(err, syscall.ECONNREFUSED):
		reason = "connection refused: the socket is left from a daemon that is no longer running"
		hint = "start mlskeyd, which replaces the stale socket"
	case errors.Is(err, fs.ErrPermission):
		reason = "permission denied"
		hint = "mlskeyd's --socket-mode and --socket-group decide who may connect: ask its administrator to add you to the socket's group"
	case errors.Is(err, syscall.ENOTSOCK):
		reason = "not a socket"
		hint = "see --socket and " + client.SocketEnv
	default:
		// The path is in the message already.
		var pe *fs.PathError
		var oe *net.OpError
		switch {
		case errors.As(err, &pe):
			err = pe.Err
		case errors.As(err, &oe):
			err = oe.Err
		}
		reason = err.Error()
		hint = "see --socket and " + client.SocketEnv
	}
	return &localError{code: "unavailable", msg: fmt.Sprintf("cannot reach mlskeyd at %s: %s (%s)", sock, reason, hint)}
}

// isTransportError reports whether err is gRPC's own UNAVAILABLE for a
// broken connection rather than one the daemon answered with.
func isTransportError(err error) bool {
	msg := status.Convert(err).Message()
	return strings.HasPrefix(msg, "connection error") || strings.HasPrefix(msg, "error reading from server") ||
		strings.Contains(msg, "transport is closing")
}

// fieldPrefix is the "field: " a server message starts with when a
// request field is at fault.
var fieldPrefix = regexp.MustCompile(`^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*): `)

type errorBody struct {
	Code    string `json:"code"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// errorJSON is err as --json prints it on stderr:
// {"error": {"code", "field", "message"}}. code is the gRPC code in
// snake case ("not_found"), or "usage", "unavailable" (daemon not
// reached), "canceled" (interrupted) or "error"; field names the request
// field at fault, or is empty.
func errorJSON(err error) any {
	b := errorBody{Code: "error", Message: strings.Join(strings.Fields(err.Error()), " ")}
	var le *localError
	var u *usageError
	switch st, isStatus := status.FromError(err); {
	case errors.As(err, &le):
		b.Code, b.Field = le.code, le.field
	case errors.As(err, &u):
		b.Code = "usage"
	case isStatus:
		b.Code = strings.ReplaceAll(codeWords(st.Code()), " ", "_")
		b.Message = strings.Join(strings.Fields(st.Message()), " ")
		switch st.Code() {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied,
			codes.OutOfRange, codes.ResourceExhausted, codes.Unimplemented, codes.AlreadyExists:
			if m := fieldPrefix.FindStringSubmatch(b.Message); m != nil {
				b.Field = m[1]
			}
		}
	}
	return struct {
		Error errorBody `json:"error"`
	}{b}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
