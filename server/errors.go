package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// invalid answers INVALID_ARGUMENT naming the request field at fault.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// statusOf maps an error from keystore or mls to a gRPC status. It names
// field only when the error is the request's fault (invalid, not found,
// not usable): a device failure, a cancellation or a deadline is not the
// fault of any field, and naming one sends the caller to the wrong place.
// Device errors keep their operation and return code (never key material)
// so operators can act on them.
func statusOf(field string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, keystore.ErrShuttingDown) {
		return status.Error(codes.Unavailable, "daemon shutting down; batch aborted, nothing was created")
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, keystore.ErrDeviceUnavailable), errors.Is(err, keystore.ErrDeviceBusy):
		code = codes.Unavailable
	case errors.Is(err, keystore.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, keystore.ErrUnsupported):
		code = codes.Unimplemented
	case errors.Is(err, keystore.ErrNotActive), errors.Is(err, keystore.ErrPolicy), errors.Is(err, keystore.ErrInUse), errors.Is(err, keystore.ErrEpochDestroyed), errors.Is(err, keystore.ErrRevoked),
		errors.Is(err, keystore.ErrUnsupportedAlgorithm):
		code = codes.FailedPrecondition
	case errors.Is(err, keystore.ErrWrongRole), errors.Is(err, keystore.ErrInvalidArgument),
		errors.Is(err, keystore.ErrInvalidPeerKey), errors.Is(err, mls.ErrMalformed),
		errors.Is(err, mls.ErrUnknownSuite), errors.Is(err, mls.ErrInvalidKeyPackage),
		errors.Is(err, mls.ErrInvalidParams), errors.Is(err, mls.ErrInvalidPublicKey),
		errors.Is(err, mls.ErrUnsupportedWireFormat), errors.Is(err, mls.ErrUnsupportedVersion):
		code = codes.InvalidArgument
	}
	var de *keystore.DeviceError
	if code == codes.Internal && errors.As(err, &de) {
		code = codes.Unavailable
	}
	msg := keystore.OneLine(err.Error())
	switch code {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Internal:
		return status.Error(code, msg)
	}
	return status.Errorf(code, "%s: %s", field, msg)
}
