package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// stubDevice is the bare Backend, failing its operations as told; the
// metrics are tested against SoftHSM in e2e (TestMetrics).
type stubDevice struct{ err error }

func (s *stubDevice) Info() keystore.DeviceInfo        { return keystore.DeviceInfo{Backend: "stub"} }
func (s *stubDevice) Algorithms() []keystore.Algorithm { return nil }
func (s *stubDevice) Close() error                     { return nil }
func (s *stubDevice) Generate(context.Context, string, keystore.Algorithm) ([]byte, []byte, error) {
	return []byte("ref"), []byte("pub"), s.err
}
func (s *stubDevice) Sign(context.Context, []byte, keystore.Algorithm, []byte) ([]byte, error) {
	return []byte("sig"), s.err
}
func (s *stubDevice) ECDH(context.Context, []byte, keystore.Algorithm, []byte) ([]byte, error) {
	return nil, s.err
}
func (s *stubDevice) Destroy(context.Context, []byte) error { return s.err }

// The keystore learns what a device can do from its type: the wrapped
// device must have exactly the capabilities of the device it wraps.
func TestBackendKeepsCapabilities(t *testing.T) {
	m := New("test")
	for mask := range 32 {
		// A device with the capabilities in mask (these are never called).
		inner := withCaps[mask](&device{be: &stubDevice{}, m: m})
		outer := m.Backend(inner)
		has := func(bit int, ok bool) {
			if ok != (mask&bit != 0) {
				t.Errorf("mask %05b: capability %05b is %v after wrapping", mask, bit, ok)
			}
		}
		_, ok := outer.(keystore.Lister)
		has(capLister, ok)
		_, ok = outer.(keystore.Sealer)
		has(capSealer, ok)
		_, ok = outer.(keystore.Checker)
		has(capChecker, ok)
		_, ok = outer.(keystore.Attester)
		has(capAttester, ok)
		_, ok = outer.(keystore.CredentialActivator)
		has(capActivator, ok)
	}
}

func TestDeviceOperationsAndErrorKinds(t *testing.T) {
	m := New("test")
	dev := &stubDevice{}
	be := m.Backend(dev)
	ctx := context.Background()
	be.Sign(ctx, nil, "", nil)
	be.Generate(ctx, "id", "")
	for _, err := range []error{
		fmt.Errorf("object 3: %w", keystore.ErrDeviceKeyNotFound),
		context.DeadlineExceeded,
		errors.New("CKR_DEVICE_REMOVED"),
	} {
		dev.err = err
		if _, gotErr := be.Sign(ctx, nil, "", nil); gotErr != err {
			t.Fatalf("error not passed through: %v", gotErr)
		}
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
	m.DeviceReconnected()
	if n := testutil.ToFloat64(m.reconnects); n != 1 {
		t.Errorf("reconnects %v", n)
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
