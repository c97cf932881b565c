package metrics

import (
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// Metrics is the observer the devices report their operations to
// (pkcs11.Config.Observer, tpm.Config.Observer): the device stays what it
// is, with every optional capability the keystore looks for, and whatever
// passes through its session pool or command queue is counted.
var _ keystore.DeviceObserver = (*Metrics)(nil)

// ObserveDeviceOp counts and times one device operation and sorts its
// error, if any, by kind.
func (m *Metrics) ObserveDeviceOp(op string, d time.Duration, err error) {
	m.deviceOps.WithLabelValues(op).Inc()
	m.deviceTime.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.deviceErrs.WithLabelValues(op, errorKind(err)).Inc()
	}
}
