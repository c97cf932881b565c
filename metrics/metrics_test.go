package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// The devices call ObserveDeviceOp (tested against SoftHSM and the TPM
// simulator in pkcs11, tpm and e2e.TestMetrics); here, the counting and
// the sorting of errors.
func TestDeviceOperationsAndErrorKinds(t *testing.T) {
	m := New("test")
	var obs keystore.DeviceObserver = m
	obs.ObserveDeviceOp("sign", time.Millisecond, nil)
	obs.ObserveDeviceOp("generate", 3*time.Millisecond, nil)
	for _, err := range []error{
		fmt.Errorf("object 3: %w", keystore.ErrDeviceKeyNotFound),
		fmt.Errorf("pkcs11: sign: %w", context.DeadlineExceeded),
		errors.New("CKR_DEVICE_REMOVED"),
	} {
		obs.ObserveDeviceOp("sign", time.Millisecond, err)
	}
	if n := testutil.ToFloat64(m.deviceOps.WithLabelValues("sign")); n != 4 {
		t.Errorf("sign operations %v, want 4", n)
	}
	for kind, want := range map[string]float64{"key_not_found": 1, "timeout": 1, "device": 1} {
		if n := testutil.ToFloat64(m.deviceErrs.WithLabelValues("sign", kind)); n != want {
			t.Errorf("sign errors of kind %s: %v, want %v", kind, n, want)
		}
	}
	if n := testutil.ToFloat64(m.deviceOps.WithLabelValues("generate")); n != 1 {
		t.Errorf("generate operations %v", n)
	}
	if n := testutil.CollectAndCount(m.deviceTime); n != 2 {
		t.Errorf("%d duration series, want 2 (per operation)", n)
	}
	obs.ObserveDeviceOp("sign", time.Millisecond, fmt.Errorf("token gone: %w", keystore.ErrDeviceUnavailable))
	if n := testutil.ToFloat64(m.deviceErrs.WithLabelValues("sign", "unavailable")); n != 1 {
		t.Errorf("sign errors of kind unavailable: %v", n)
	}
	obs.ObserveDeviceOp("sign", time.Millisecond, fmt.Errorf("tpm: %w: no turn at the TPM within 2s", keystore.ErrDeviceBusy))
	if n := testutil.ToFloat64(m.deviceErrs.WithLabelValues("sign", "busy")); n != 1 {
		t.Errorf("sign errors of kind busy: %v", n)
	}
}

func TestInterceptorCountsByMethodAndCode(t *testing.T) {
	m := New("test")
	ic := m.UnaryInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/mlskey.v1.KeyService/GetKey"}
	ok := func(context.Context, any) (any, error) { return "x", nil }
	notFound := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.NotFound, "id: key 0123 not found")
	}
	ic(context.Background(), nil, info, ok)
	ic(context.Background(), nil, info, notFound)
	ic(context.Background(), nil, info, notFound)
	if n := testutil.ToFloat64(m.calls.WithLabelValues("mlskey.v1.KeyService/GetKey", "NotFound")); n != 2 {
		t.Errorf("NotFound calls %v", n)
	}
	if n := testutil.ToFloat64(m.calls.WithLabelValues("mlskey.v1.KeyService/GetKey", "OK")); n != 1 {
		t.Errorf("OK calls %v", n)
	}
	if n := testutil.CollectAndCount(m.latency); n != 1 {
		t.Errorf("%d latency series, want 1 (per method, not per code)", n)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	if !strings.Contains(out, `mlskeyd_grpc_calls_total{code="NotFound",method="mlskey.v1.KeyService/GetKey"} 2`) {
		t.Errorf("exposition lacks the call count:\n%s", out)
	}
	if strings.Contains(out, "0123") {
		t.Errorf("an error message leaked into a label:\n%s", out)
	}
}
