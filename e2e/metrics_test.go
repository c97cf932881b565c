package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
)

// scrape reads the daemon's metrics from a Unix socket.
func scrape(t testing.TB, sock string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://mlskeyd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %v %s", err, resp.Status)
	}
	return string(b)
}

// metricValue returns the value of the series written exactly as series
// (name{labels} in Prometheus's sorted label order), or -1.
func metricValue(text, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetrics(t *testing.T) {
	cfg := writeConfig(t, map[string]any{"policy": map[string]any{
		"rate_limit": map[string]any{"per_second": 0.001, "burst": 12},
	}})
	state := t.TempDir()
	msock := filepath.Join(state, "metrics.sock")
	d := startDaemon(t, state, "--config", cfg, "--metrics-listen", "unix:"+msock)
	c := d.client()
	ctx := context.Background()
	key, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	if err != nil {
		t.Fatal(err)
	}
	content := tbs(t, "FramedContentTBS", 2, key.GetPublicKey(), "metrics")
	for range 3 {
		if _, err := c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: key.GetId(), Label: "FramedContentTBS", Content: content}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.GetKey(ctx, &pb.GetKeyRequest{Id: "00112233445566778899aabbccddeeff"})
	wantCode(t, "unknown key", err, codes.NotFound, "id")
	kps := createKPs(t, c, 1, 2)
	info, err := c.GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The daemon's start-up status call and the calls above used 9 of the
	// burst of 12; run into the limit.
	limited := 0
	for range 10 {
		if _, err := c.GetKey(ctx, &pb.GetKeyRequest{Id: key.GetId()}); err != nil {
			wantCode(t, "over the rate limit", err, codes.ResourceExhausted, "caller")
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("the rate limit refused nothing")
	}

	text := scrape(t, msock)
	const ks = "mlskey.v1.KeyService/"
	for series, want := range map[string]float64{
		`mlskeyd_grpc_calls_total{code="OK",method="` + ks + `SignWithLabel"}`:         3,
		`mlskeyd_grpc_calls_total{code="NotFound",method="` + ks + `GetKey"}`:          1,
		`mlskeyd_grpc_calls_total{code="ResourceExhausted",method="` + ks + `GetKey"}`: float64(limited),
		`mlskeyd_grpc_call_duration_seconds_count{method="` + ks + `SignWithLabel"}`:   3,
		`mlskeyd_rate_limited_total`: float64(limited),
		// 3 calls, and LeafNodeTBS and KeyPackageTBS for each KeyPackage.
		`mlskeyd_device_operations_total{operation="sign"}`:                   7,
		`mlskeyd_keys{protection="hardware",role="signature",state="active"}`: 2,
		`mlskeyd_keys{protection="hardware",role="init",state="active"}`:      2,
		`mlskeyd_keypackages_unused{last_resort="false",suite="1"}`:           2,
		`mlskeyd_audit_write_failures_total`:                                  0,
		`mlskeyd_device_reconnects_total`:                                     0,
		`mlskeyd_device_up`:                                                   1,
		`mlskeyd_catalog_scrape_error`:                                        0,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Generating keys for a suite-1 KeyPackage batch: a signature key, and
	// an init and a leaf encryption key per KeyPackage, each in the token.
	if got := metricValue(text, `mlskeyd_device_operations_total{operation="generate"}`); got < 6 {
		t.Errorf("device generate operations %v, want at least 6", got)
	}
	if metricValue(text, "process_resident_memory_bytes") <= 0 || metricValue(text, "go_goroutines") <= 0 {
		t.Error("process and Go runtime metrics missing")
	}
	// No key id or uid ever becomes a label value.
	for _, id := range []string{key.GetId(), kps.KeyPackages[0].InitKeyId, "00112233445566778899aabbccddeeff"} {
		if strings.Contains(text, id) {
			t.Errorf("key id %s appears in the metrics", id)
		}
	}
	if strings.Contains(text, `uid="`) || strings.Contains(text, `owner="`) {
		t.Error("a uid label appears in the metrics")
	}

	// The metrics observe the device without standing in for it: the
	// keystore still finds its capabilities, so the first start wrote the
	// installation marker on the token (the device's binding read counted
	// too), and the same state starts without metrics.
	if got := metricValue(text, `mlskeyd_device_operations_total{operation="binding"}`); got < 1 {
		t.Errorf("device binding reads %v, want at least 1", got)
	}
	if got := metricValue(text, `mlskeyd_build_info{version="`+info.GetVersion()+`"}`); got != 1 {
		t.Errorf("build info for version %q: %v", info.GetVersion(), got)
	}
	d.stop()
	again, err := startDaemon(t, state, "--config", cfg).client().GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil || again.GetInstallationId() != info.GetInstallationId() || info.GetInstallationId() == "" {
		t.Fatalf("restart without metrics: installation %q, %v; with metrics it was %q", again.GetInstallationId(), err, info.GetInstallationId())
	}
}

// An audit log that cannot be written shows in the metrics (the calls
// themselves go on unless fail_closed).
func TestMetricsAuditWriteFailures(t *testing.T) {
	state := t.TempDir()
	msock := filepath.Join(state, "metrics.sock")
	d := startDaemon(t, state, "--audit-log", "/dev/full", "--metrics-listen", msock)
	c := d.client()
	if _, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: 2}); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(scrape(t, msock), "mlskeyd_audit_write_failures_total"); got < 1 {
		t.Fatalf("audit write failures %v, want at least 1", got)
	}
}

// On a TPM, a device with other capabilities (attestation, no Lister),
// attestation works with the metrics on and is counted, and a TPM has no
// PKCS#11 URI.
func TestMetricsTPM(t *testing.T) {
	state := t.TempDir()
	msock := filepath.Join(state, "metrics.sock")
	d := startDaemon(t, state, "--backend", "tpm", "--metrics-listen", "unix:"+msock)
	c := d.client()
	ctx := context.Background()
	info, err := c.GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil || info.GetDeviceUri() != "" {
		t.Fatalf("TPM device URI %q, %v", info.GetDeviceUri(), err)
	}
	key, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AttestKey(ctx, &pb.AttestKeyRequest{KeyId: key.GetId(), Nonce: []byte("metrics nonce")}); err != nil {
		t.Fatalf("attest with metrics: %v", err)
	}
	text := scrape(t, msock)
	for series, want := range map[string]float64{
		`mlskeyd_device_operations_total{operation="attest"}`:                         1,
		`mlskeyd_keys{protection="hardware",role="signature",state="active"}`:         1,
		`mlskeyd_grpc_calls_total{code="OK",method="mlskey.v1.KeyService/AttestKey"}`: 1,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if metricValue(text, `mlskeyd_device_operations_total{operation="generate"}`) < 1 {
		t.Error("no generate counted")
	}
}
