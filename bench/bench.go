// Package bench is the measuring loop shared by `mlskeyd bench` (an
// operation in-process on the device) and `mlskeyctl bench` (the same
// operation through a running daemon), and the MLS inputs both feed it.
// Its Result's JSON is the contract of both commands.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"time"
)

// Ops are the operations both commands measure.
var Ops = []string{"sign", "open-welcome", "keypackage-create", "key-create"}

// KeyPackageBatch is the batch size of op keypackage-create; its ops
// count KeyPackages.
const KeyPackageBatch = 100

// Result is one run, printed as one JSON object.
type Result struct {
	Op          string  `json:"op"`
	Suite       uint16  `json:"suite"`
	Concurrency int     `json:"concurrency"`
	DurationS   float64 `json:"duration_s"`
	Ops         int64   `json:"ops"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	// P50US and P99US are latencies of one call (for keypackage-create,
	// of one batch) in microseconds.
	P50US  float64 `json:"p50_us"`
	P99US  float64 `json:"p99_us"`
	Errors int64   `json:"errors"`
}

// Options of a run.
type Options struct {
	Op          string
	Suite       uint16
	Concurrency int
	Duration    time.Duration
	// OpsPerCall is how many ops one call does (KeyPackageBatch for
	// keypackage-create, else 1).
	OpsPerCall int
	// MaxErrors stops the run early after that many failed calls (0: 100),
	// so a misconfigured run does not spin for its whole duration.
	MaxErrors int64
	// OnError, if set, is told of every failed call (the first ones are
	// worth printing).
	OnError func(error)
}

// Check validates the options common to both commands.
func (o Options) Check() error {
	if !slices.Contains(Ops, o.Op) {
		return fmt.Errorf("--op %q: want one of %v", o.Op, Ops)
	}
	if o.Suite == 0 {
		return errors.New("--suite: required (a cipher suite number, e.g. 1)")
	}
	if o.Concurrency < 1 || o.Concurrency > 1024 {
		return fmt.Errorf("--concurrency %d: want 1..1024", o.Concurrency)
	}
	if o.Duration <= 0 {
		return fmt.Errorf("--duration %v: want a positive duration", o.Duration)
	}
	return nil
}

// Run calls fn from o.Concurrency goroutines until o.Duration has passed
// (every call started before the end finishes) or ctx is done, and
// reports what it measured. A call is started only while time is left, so
// a run of slow calls (batches) may last longer than o.Duration; the rate
// is over the real elapsed time.
func Run(ctx context.Context, o Options, fn func(ctx context.Context) error) Result {
	per := max(o.OpsPerCall, 1)
	maxErr := o.MaxErrors
	if maxErr <= 0 {
		maxErr = 100
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var ok, failed int64
	start := time.Now()
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Go(func() {
			var mine []time.Duration
			defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
			for ctx.Err() == nil && time.Now().Before(end) {
				t := time.Now()
				err := fn(ctx)
				d := time.Since(t)
				mu.Lock()
				if err != nil {
					failed++
					stop := failed >= maxErr
					mu.Unlock()
					if o.OnError != nil && ctx.Err() == nil {
						o.OnError(err)
					}
					if stop {
						cancel()
					}
					continue
				}
				ok++
				mu.Unlock()
				mine = append(mine, d)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := Result{Op: o.Op, Suite: o.Suite, Concurrency: o.Concurrency,
		DurationS: round(elapsed.Seconds(), 3), Ops: ok * int64(per), Errors: failed}
	if elapsed > 0 {
		r.OpsPerSec = round(float64(r.Ops)/elapsed.Seconds(), 1)
	}
	slices.Sort(lat)
	r.P50US = percentile(lat, 0.50)
	r.P99US = percentile(lat, 0.99)
	return r
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = min(max(i, 0), len(sorted)-1)
	return round(float64(sorted[i].Nanoseconds())/1e3, 1)
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// Print writes r as a line for people.
func (r Result) Print(w io.Writer) {
	fmt.Fprintf(w, "%s suite %d, concurrency %d: %d ops in %.1fs = %.1f ops/s; p50 %.0f µs, p99 %.0f µs; %d errors\n",
		r.Op, r.Suite, r.Concurrency, r.Ops, r.DurationS, r.OpsPerSec, r.P50US, r.P99US, r.Errors)
}
