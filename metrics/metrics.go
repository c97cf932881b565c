// Package metrics exposes the daemon's Prometheus metrics: calls by method
// and status code, latency per method, device operations and errors,
// device reconnects, the key catalog by role, state and protection, unused
// KeyPackages per suite, audit write failures and rate-limit refusals.
//
// No label carries a key id, a uid or anything else a caller chooses:
// every label takes values from a short fixed set, so the number of series
// stays bounded however the daemon is used.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Metrics holds the daemon's collectors in a registry of its own.
type Metrics struct {
	reg *prometheus.Registry

	calls       *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	deviceOps   *prometheus.CounterVec
	deviceErrs  *prometheus.CounterVec
	deviceTime  *prometheus.HistogramVec
	auditFailed prometheus.Counter
	rateLimited prometheus.Counter
}

// New returns the metrics, with the Go runtime's and the process's own
// (memory, descriptors, CPU) registered beside them.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlskeyd_grpc_calls_total",
		Help: "gRPC calls handled, by method and status code.",
	}, []string{"method", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mlskeyd_grpc_call_duration_seconds",
		Help: "Time to handle a gRPC call, by method.",
		// 100 µs (a catalog read) to 93 s: a batch of 1,000 KeyPackages
		// with token-object keys takes about a minute on SoftHSM.
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16),
	}, []string{"method"})
	m.deviceOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlskeyd_device_operations_total",
		Help: "Operations on the key device (PKCS#11 token or TPM), by operation.",
	}, []string{"operation"})
	m.deviceErrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlskeyd_device_errors_total",
		Help: "Failed operations on the key device, by operation and kind of error.",
	}, []string{"operation", "kind"})
	m.deviceTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mlskeyd_device_operation_duration_seconds",
		Help:    "Time the key device took for an operation, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.00002, 2.5, 13),
	}, []string{"operation"})
	m.auditFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlskeyd_audit_write_failures_total",
		Help: "Audit records that could not be written.",
	})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlskeyd_rate_limited_total",
		Help: "Calls refused because the caller's uid was over the policy's rate limit.",
	})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "mlskeyd_build_info",
		Help:        "The daemon's version, as a label; always 1.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	m.reg.MustRegister(m.calls, m.latency, m.deviceOps, m.deviceErrs, m.deviceTime,
		m.auditFailed, m.rateLimited, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the metrics are registered, for tests and for
// collectors added by the daemon.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// UnaryInterceptor counts and times every unary call. Put it first in the
// chain so that it sees calls refused by authentication and rate limits.
// Unknown methods never reach an interceptor, so the method label takes
// only the values of the services the daemon registers.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		method := strings.TrimPrefix(info.FullMethod, "/")
		m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		m.calls.WithLabelValues(method, status.Code(err).String()).Inc()
		return resp, err
	}
}

// AuditWriteFailed counts an audit record that could not be written.
func (m *Metrics) AuditWriteFailed() { m.auditFailed.Inc() }

// RateLimited counts a call refused by the rate limit.
func (m *Metrics) RateLimited() { m.rateLimited.Inc() }

// errorKind sorts a device error into a few kinds an operator can act on.
func errorKind(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, keystore.ErrDeviceUnavailable):
		return "unavailable"
	case errors.Is(err, keystore.ErrDeviceBusy):
		return "busy"
	case errors.Is(err, keystore.ErrDeviceKeyNotFound):
		return "key_not_found"
	case errors.Is(err, keystore.ErrUnsupportedAlgorithm), errors.Is(err, keystore.ErrUnsupported):
		return "unsupported"
	case errors.Is(err, keystore.ErrInvalidPeerKey), errors.Is(err, keystore.ErrInvalidArgument):
		return "invalid_input"
	}
	return "device"
}

// WatchStore publishes the catalog's keys by role, state and protection,
// the unused KeyPackages (active init keys) per suite, and the device's
// health as the store sees it: whether it serves, and how often it came
// back after being lost (the backend's reconnections). They are read when
// scraped, so they cost nothing between scrapes and no reconnection can
// be missed.
func (m *Metrics) WatchStore(store *keystore.Store) {
	m.reg.MustRegister(&storeCollector{store: store})
}

var (
	keysDesc = prometheus.NewDesc("mlskeyd_keys",
		"Keys in the catalog, by role, state and protection (destroyed keys are tombstones).",
		[]string{"role", "state", "protection"}, nil)
	unusedKPDesc = prometheus.NewDesc("mlskeyd_keypackages_unused",
		"KeyPackages whose init key is still active, by cipher suite and whether they are last-resort.",
		[]string{"suite", "last_resort"}, nil)
	scrapeErrDesc = prometheus.NewDesc("mlskeyd_catalog_scrape_error",
		"1 if the catalog could not be read for the key counts of this scrape.", nil, nil)
	reconnectsDesc = prometheus.NewDesc("mlskeyd_device_reconnects_total",
		"Times the daemon reconnected to the key device after losing it.", nil, nil)
	deviceUpDesc = prometheus.NewDesc("mlskeyd_device_up",
		"1 while the key device serves; 0 while it is gone (the daemon reconnects) or failed for good.", nil, nil)
)

type storeCollector struct{ store *keystore.Store }

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keysDesc
	ch <- unusedKPDesc
	ch <- scrapeErrDesc
	ch <- reconnectsDesc
	ch <- deviceUpDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.store.Health()
	up := 0.0
	if h.Ready() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(deviceUpDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(reconnectsDesc, prometheus.CounterValue, float64(h.Recoveries))
	type keyClass struct{ role, state, protection string }
	type kpClass struct {
		suite      uint16
		lastResort bool
	}
	keys := map[keyClass]int{}
	unused := map[kpClass]int{}
	_, err := c.store.Count(keystore.Filter{}, func(r *keystore.Record) bool {
		keys[keyClass{string(r.Role), string(r.State), string(r.Protection)}]++
		if r.Role == keystore.RoleInit && r.State == keystore.StateActive {
			unused[kpClass{r.Suite, r.LastResort}]++
		}
		return false
	})
	failed := 0.0
	if err != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, failed)
	if err != nil {
		return
	}
	for k, n := range keys {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(n), k.role, k.state, k.protection)
	}
	for k, n := range unused {
		ch <- prometheus.MustNewConstMetric(unusedKPDesc, prometheus.GaugeValue, float64(n),
			strconv.Itoa(int(k.suite)), strconv.FormatBool(k.lastResort))
	}
}
