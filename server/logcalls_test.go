package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Successful calls are logged at debug level only, and only when it is
// enabled; failures always are.
func TestLogCallsLevels(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/mlskey.v1.KeyService/SignWithLabel"}
	ok := func(context.Context, any) (any, error) { return "resp", nil }
	bad := func(context.Context, any) (any, error) { return nil, status.Error(codes.NotFound, "key_id: no key") }
	for _, tc := range []struct {
		level slog.Level
		h     grpc.UnaryHandler
		want  string // "" for nothing logged
	}{
		{slog.LevelDebug, ok, "level=DEBUG msg=call method=/mlskey.v1.KeyService/SignWithLabel code=OK"},
		{slog.LevelInfo, ok, ""},
		{slog.LevelInfo, bad, `level=INFO msg="call failed" method=/mlskey.v1.KeyService/SignWithLabel code=NotFound`},
		{slog.LevelWarn, bad, ""},
	} {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level}))
		resp, err := logCalls(log)(context.Background(), nil, info, tc.h)
		if want, _ := tc.h(context.Background(), nil); resp != want {
			t.Fatalf("response %v, want %v", resp, want)
		}
		if _, werr := tc.h(context.Background(), nil); status.Code(err) != status.Code(werr) {
			t.Fatalf("error %v, want %v", err, werr)
		}
		got := buf.String()
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Fatalf("level %v: logged %q, want %q", tc.level, got, tc.want)
		}
	}
}
