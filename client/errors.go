package client

import (
	"context"
	"errors"
	"regexp"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kinds of daemon errors, for errors.Is. Every error a Client's RPC returns
// is an *Error (when the connection was made by Dial, or with TypedErrors),
// which still carries the gRPC status for status.FromError and status.Code.
var (
	// ErrNotFound: no such key, or not one the caller may see, or no entry
	// of the Welcome is for one of the daemon's KeyPackages.
	ErrNotFound = errors.New("not found")
	// ErrConsumed: the init key was already used by a Welcome.
	ErrConsumed = errors.New("init key consumed")
	// ErrPermissionDenied: the caller may not do this (policy, admin-only
	// request, or a peer the daemon cannot identify).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the daemon or its device cannot be reached.
	ErrUnavailable = errors.New("unavailable")
)

// Error is a daemon error: its gRPC status, matched by errors.Is against
// the kinds above. Its text is the status error's, unchanged.
type Error struct {
	st   *status.Status
	kind error
}

func (e *Error) Error() string { return e.st.Err().Error() }

// Code is the gRPC status code.
func (e *Error) Code() codes.Code { return e.st.Code() }

// Message is the daemon's message: the field at fault first.
func (e *Error) Message() string { return e.st.Message() }

// GRPCStatus lets status.FromError and status.Code see through the wrapper.
func (e *Error) GRPCStatus() *status.Status { return e.st }

func (e *Error) Is(target error) bool { return e.kind != nil && target == e.kind }

// The daemon says "is consumed" of a key, "was already used" of the init
// key of a Welcome's KeyPackage.
var consumedText = regexp.MustCompile(`\bconsumed\b|\balready used\b`)

// typed turns a gRPC status error into an *Error; other errors (and nil)
// are returned as they are.
func typed(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{st: st}
	switch st.Code() {
	case codes.NotFound:
		e.kind = ErrNotFound
	case codes.PermissionDenied, codes.Unauthenticated:
		e.kind = ErrPermissionDenied
	case codes.Unavailable:
		e.kind = ErrUnavailable
	case codes.FailedPrecondition:
		if consumedText.MatchString(st.Message()) {
			e.kind = ErrConsumed
		}
	}
	return e
}

// TypedErrors is the dial option Dial uses to return *Error values; add it
// to a connection made by hand for New.
func TypedErrors() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return typed(invoker(ctx, method, req, reply, cc, opts...))
	})
}

// CallTimeout bounds every call whose context has no deadline of its own to
// d, so a wedged daemon or device cannot hang the caller forever.
func CallTimeout(d time.Duration) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
}
