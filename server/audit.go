package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Auditor writes one audit record per KeyService call: who, what, which
// key, which label, and how it ended. Never content, secrets or keys.
type Auditor struct {
	Log *audit.Log
	// FailClosed refuses every operation that cannot be logged. The call
	// then writes a "started" record before it runs, so a log that cannot
	// be written stops the operation before it changes anything, and its
	// outcome record after.
	FailClosed bool
	Logger     *slog.Logger
}

// auditEntry collects what a handler learns about a call (the keys it
// touched, why it was denied) for the record written when it returns.
type auditEntry struct {
	keyIDs []string
	label  string
	denied string
}

type auditKey struct{}

func entryOf(ctx context.Context) *auditEntry {
	e, _ := ctx.Value(auditKey{}).(*auditEntry)
	return e
}

// noteKeys adds the keys a call used or created to its audit record.
func noteKeys(ctx context.Context, ids ...string) {
	if e := entryOf(ctx); e != nil {
		for _, id := range ids {
			if id != "" {
				e.keyIDs = append(e.keyIDs, id)
			}
		}
	}
}

// noteDenied marks a call as denied, with the true reason, even where the
// caller is told only NOT_FOUND.
func noteDenied(ctx context.Context, reason string) {
	if e := entryOf(ctx); e != nil {
		e.denied = reason
	}
}

// requestFacts returns the key id and label a request names, as far as
// they are valid: an audit record keeps only validated values, so a
// caller cannot grow the log by sending a 100 kB label or key id.
func requestFacts(req any) (keyID, label string) {
	keyID, label = rawFacts(req)
	if keyID != "" && checkKeyID("", keyID) != nil {
		keyID = ""
	}
	if label != "" && !knownLabel(label) {
		label = fmt.Sprintf("<unknown label of %d bytes>", len(label))
	}
	return keyID, label
}

func knownLabel(l string) bool {
	return slices.Contains(mls.SignatureLabels, l) || l == mls.LabelUpdatePathNode || l == mls.LabelWelcome || l == csrLabel
}

// maxReason bounds an audit record's reason.
const maxReason = 200

// oneLine makes s a single line of at most max bytes (cut at a rune
// boundary, marked with "…"): reasons come from error messages, which
// must neither split a record nor grow it without bound.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= max {
		return s
	}
	cut := max - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func rawFacts(req any) (keyID, label string) {
	switch r := req.(type) {
	case *pb.GetKeyRequest:
		return r.GetId(), ""
	case *pb.DeleteKeyRequest:
		return r.GetId(), ""
	case *pb.SignWithLabelRequest:
		return r.GetKeyId(), r.GetLabel()
	case *pb.DecryptWithLabelRequest:
		return r.GetKeyId(), r.GetLabel()
	case *pb.AttestKeyRequest:
		return r.GetKeyId(), ""
	case *pb.ActivateCredentialRequest:
		return r.GetKeyId(), ""
	case *pb.CreateKeyPackagesRequest:
		return r.GetSignatureKeyId(), ""
	case *pb.OpenWelcomeRequest:
		return "", "Welcome"
	case *pb.CreateCSRRequest:
		return r.GetKeyId(), csrLabel
	}
	return "", ""
}

func outcome(err error, e *auditEntry) (string, string) {
	code := status.Code(err)
	switch {
	case code == codes.OK:
		return audit.OutcomeOK, ""
	case e.denied != "":
		return audit.OutcomeDenied, oneLine(e.denied, maxReason)
	case code == codes.PermissionDenied || code == codes.Unauthenticated || code == codes.ResourceExhausted:
		return audit.OutcomeDenied, oneLine(status.Convert(err).Message(), maxReason)
	}
	return audit.OutcomeError, oneLine(status.Convert(err).Message(), maxReason)
}

// interceptor audits KeyService calls; GetInfo, health and reflection name
// no key and are not recorded.
func (a *Auditor) interceptor() grpc.UnaryServerInterceptor {
	prefix := "/" + pb.KeyService_ServiceDesc.ServiceName + "/"
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		op, ok := strings.CutPrefix(info.FullMethod, prefix)
		if !ok || op == "GetInfo" {
			return h(ctx, req)
		}
		keyID, label := requestFacts(req)
		rec := audit.Record{Operation: op, KeyID: keyID, Label: label}
		if p, ok := PeerFromContext(ctx); ok {
			rec.UID, rec.GID, rec.PID, rec.Exe = p.UID, p.GID, p.PID, p.Exe
		}
		if a.FailClosed {
			started := rec
			started.Outcome = "started"
			if err := a.Log.Append(started); err != nil {
				a.Logger.Error("audit log unwritable; refusing the call", "method", info.FullMethod, "err", err)
				return nil, status.Error(codes.Unavailable, "audit: the audit log cannot be written; operations are refused (audit fail_closed)")
			}
		}
		e := &auditEntry{label: label}
		resp, err := h(context.WithValue(ctx, auditKey{}, e), req)
		if rec.KeyID == "" && len(e.keyIDs) > 0 {
			rec.KeyID, e.keyIDs = e.keyIDs[0], e.keyIDs[1:]
		}
		rec.KeyIDs = e.keyIDs
		rec.Outcome, rec.Reason = outcome(err, e)
		rec.Code = status.Code(err).String()
		if aerr := a.Log.Append(rec); aerr != nil {
			// The operation has run; fail-closed already ensured the log
			// was writable when it started.
			a.Logger.Error("audit record lost", "method", info.FullMethod, "err", aerr)
		}
		return resp, err
	}
}
