package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/audit"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// auditedCall runs one call through the auditor and returns its record
// and the log's size.
func auditedCall(t *testing.T, op string, req any, h grpc.UnaryHandler) (audit.Record, int64) {
	t.Helper()
	e := env(t)
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(p, audit.Options{Sync: audit.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	a := &Auditor{Log: l, Logger: e.svc.log}
	a.interceptor()(e.ctx, req, &grpc.UnaryServerInfo{FullMethod: "/mlskey.v1.KeyService/" + op}, h)
	l.Close()
	b, _ := os.ReadFile(p)
	recs := readRecords(t, b)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	return recs[0], int64(len(b))
}

func readRecords(t *testing.T, b []byte) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestAuditRecordsOnlyValidatedValues(t *testing.T) {
	e := env(t)
	// A refused SignWithLabel with a 100 kB label: before, the label and
	// the reason quoting it made a 200 kB record.
	req := &pb.SignWithLabelRequest{KeyId: e.sig, Label: strings.Repeat("x", 100_000), Content: []byte{1}}
	rec, size := auditedCall(t, "SignWithLabel", req, func(ctx context.Context, r any) (any, error) {
		return e.svc.SignWithLabel(ctx, r.(*pb.SignWithLabelRequest))
	})
	if size > 1024 || rec.Label != "<unknown label of 100000 bytes>" || rec.KeyID != e.sig || rec.Code != "InvalidArgument" {
		t.Fatalf("record of %d bytes: %+v", size, rec)
	}
	// A malformed key id is not recorded; a multi-line, long reason is cut
	// to one line.
	req = &pb.SignWithLabelRequest{KeyId: "not/a\nkey", Label: "FramedContentTBS"}
	rec, _ = auditedCall(t, "SignWithLabel", req, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.Unavailable, "device: "+strings.Repeat("CKR_DEVICE_ERROR\n", 400))
	})
	if rec.KeyID != "" || rec.Label != "FramedContentTBS" || len(rec.Reason) > maxReason || strings.ContainsAny(rec.Reason, "\n\r") || !strings.HasSuffix(rec.Reason, "…") {
		t.Fatalf("record: %+v", rec)
	}
	// The caller's error does not echo the label either.
	_, err := e.svc.SignWithLabel(e.ctx, &pb.SignWithLabelRequest{KeyId: e.sig, Label: strings.Repeat("y", 100_000)})
	if msg := status.Convert(err).Message(); len(msg) > 300 || !strings.Contains(msg, "(100000 bytes)") {
		t.Fatalf("error of %d bytes: %.300s", len(msg), msg)
	}
	if oneLine("a\x00b\u00e9"+strings.Repeat("é", 200), 20) != "a b"+strings.Repeat("é", 7)+"…" {
		t.Errorf("oneLine: %q", oneLine("a\x00b\u00e9"+strings.Repeat("é", 200), 20))
	}
}
