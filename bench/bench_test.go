package bench

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/mls"
)

func TestRunCountsOpsAndErrors(t *testing.T) {
	var calls atomic.Int64
	r := Run(context.Background(), Options{Op: "keypackage-create", Suite: 1, Concurrency: 3, Duration: 50 * time.Millisecond, OpsPerCall: 100, MaxErrors: 1 << 40},
		func(context.Context) error {
			if calls.Add(1)%2 == 0 {
				return errors.New("every second call fails")
			}
			return nil
		})
	n := calls.Load()
	if r.Ops+r.Errors*100 != n*100 || r.Errors != n/2 || r.Concurrency != 3 || r.Op != "keypackage-create" {
		t.Fatalf("%d calls gave %+v", n, r)
	}
	if r.Ops > 0 && (r.P50US <= 0 || r.P99US < r.P50US) {
		t.Fatalf("percentiles %+v", r)
	}
}

func TestRunStopsAfterMaxErrors(t *testing.T) {
	var calls atomic.Int64
	r := Run(context.Background(), Options{Op: "sign", Suite: 1, Concurrency: 1, Duration: time.Hour, MaxErrors: 5},
		func(context.Context) error { calls.Add(1); return errors.New("no") })
	if r.Errors != 5 || r.Ops != 0 {
		t.Fatalf("%+v after %d calls", r, calls.Load())
	}
}

func TestCheck(t *testing.T) {
	ok := Options{Op: "sign", Suite: 1, Concurrency: 1, Duration: time.Second}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{Op: "dance", Suite: 1, Concurrency: 1, Duration: time.Second},
		{Op: "sign", Concurrency: 1, Duration: time.Second},
		{Op: "sign", Suite: 1, Duration: time.Second},
		{Op: "sign", Suite: 1, Concurrency: 1},
	} {
		if o.Check() == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestWelcomeOpens: the Welcome input opens with the init key, and its
// GroupInfo decrypts with the joiner secret.
func TestWelcomeOpens(t *testing.T) {
	su, _ := mls.LookupSuite(2)
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ref := []byte("a KeyPackageRef of some length..")
	msg, err := Welcome(su, ref, priv.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	m, err := mls.UnmarshalMLSMessage(msg)
	if err != nil || m.Welcome == nil {
		t.Fatalf("%v, %+v", err, m)
	}
	entry := m.Welcome.Find(ref)
	if entry == nil {
		t.Fatal("no entry for the ref")
	}
	gs, err := su.OpenGroupSecrets(m.Welcome, entry, priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := su.DecryptGroupInfo(m.Welcome, gs, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := mls.ParseFramedContentTBS(FramedContentTBS(su)); err != nil {
		t.Fatalf("FramedContentTBS: %v", err)
	}
}
