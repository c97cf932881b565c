package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

func (c *cli) bench(args []string) error {
	o := bench.Options{OpsPerCall: 1}
	var suite uint
	fs := c.newFlagSet("bench", "--op OP --suite S [--concurrency N] [--duration D] [flags]", `Measure an operation through the running daemon: --concurrency callers make
calls for --duration, on keys the bench creates and deletes at the end. OP is
sign (SignWithLabel of a FramedContentTBS), open-welcome (OpenWelcome of a
Welcome to a last-resort KeyPackage, so nothing is consumed),
keypackage-create (batches of 100; ops count KeyPackages) or key-create.
'mlskeyd bench' runs the same operations in-process on the device; --json
prints the same object: op, suite, concurrency, duration_s, ops, ops_per_sec,
p50_us, p99_us, errors. --timeout bounds each call.`, func(fs *flag.FlagSet) {
		fs.StringVar(&o.Op, "op", "", "the operation `OP` (required)")
		fs.UintVar(&suite, "suite", 0, "the MLS cipher suite `number` (required)")
		fs.IntVar(&o.Concurrency, "concurrency", 1, "concurrent `callers`")
		fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to start new calls")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	if suite > 0xffff {
		return usageErrorf("bench: --suite %d is not a cipher suite number", suite)
	}
	o.Suite = uint16(suite)
	if err := o.Check(); err != nil {
		return usageErrorf("bench: %v", err)
	}
	if o.Op == "keypackage-create" {
		o.OpsPerCall = bench.KeyPackageBatch
	}
	su, err := mls.LookupSuite(mls.CipherSuite(o.Suite))
	if err != nil {
		return usageErrorf("bench: --suite %d: %v", o.Suite, err)
	}
	perCall := c.g.timeout
	c.g.timeout = 0 // the run lasts as long as it lasts; each call is bounded below
	return c.withClient(func(ctx context.Context, cl *client.Client) (err error) {
		b := &daemonBench{cl: cl, su: su}
		defer func() {
			if cerr := b.cleanup(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		call, err := b.prepare(ctx, o.Op)
		if err != nil {
			return fmt.Errorf("bench %s: setting up: %w", o.Op, err)
		}
		var first error
		var once sync.Once
		o.OnError = func(err error) { once.Do(func() { first = err }) }
		r := bench.Run(ctx, o, func(ctx context.Context) error {
			if perCall > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, perCall)
				defer cancel()
			}
			return call(ctx)
		})
		if c.g.json {
			if err := json.NewEncoder(c.stdout).Encode(r); err != nil {
				return err
			}
		} else {
			r.Print(c.stdout)
		}
		if r.Errors > 0 {
			fmt.Fprintf(c.stderr, "mlskeyctl: bench: %d calls failed; the first: %s\n", r.Errors, errorLine(first))
		}
		if r.Ops == 0 && r.Errors > 0 {
			return fmt.Errorf("bench %s: every call failed", o.Op)
		}
		return nil
	})
}

// daemonBench holds the keys a bench made, to delete them at the end.
type daemonBench struct {
	cl   *client.Client
	su   *mls.Suite
	mu   sync.Mutex
	sigs []string
}

func (b *daemonBench) newSig(ctx context.Context) (*pb.Key, error) {
	k, err := b.cl.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: uint32(b.su.ID)})
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.sigs = append(b.sigs, k.Id)
	b.mu.Unlock()
	return k, nil
}

func (b *daemonBench) keyPackages(ctx context.Context, sigID string, n int, lastResort bool) (*pb.CreateKeyPackagesResponse, error) {
	resp, err := b.cl.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{
		CipherSuite: uint32(b.su.ID), SignatureKeyId: sigID, Count: uint32(n), LastResort: lastResort,
		Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("bench")}},
	})
	if err == nil && sigID == "" {
		b.mu.Lock()
		b.sigs = append(b.sigs, resp.SignatureKey.Id)
		b.mu.Unlock()
	}
	return resp, err
}

func (b *daemonBench) prepare(ctx context.Context, op string) (func(context.Context) error, error) {
	switch op {
	case "key-create":
		return func(ctx context.Context) error { _, err := b.newSig(ctx); return err }, nil
	case "sign":
		k, err := b.newSig(ctx)
		if err != nil {
			return nil, err
		}
		req := &pb.SignWithLabelRequest{KeyId: k.Id, Label: mls.LabelFramedContentTBS, Content: bench.FramedContentTBS(b.su)}
		return func(ctx context.Context) error { _, err := b.cl.SignWithLabel(ctx, req); return err }, nil
	case "keypackage-create":
		k, err := b.newSig(ctx)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			_, err := b.keyPackages(ctx, k.Id, bench.KeyPackageBatch, false)
			return err
		}, nil
	case "open-welcome":
		resp, err := b.keyPackages(ctx, "", 1, true)
		if err != nil {
			return nil, err
		}
		kp := resp.KeyPackages[0]
		init, err := b.cl.GetKey(ctx, &pb.GetKeyRequest{Id: kp.InitKeyId})
		if err != nil {
			return nil, err
		}
		w, err := bench.Welcome(b.su, kp.KeyPackageRef, init.PublicKey)
		if err != nil {
			return nil, err
		}
		req := &pb.OpenWelcomeRequest{Welcome: w}
		return func(ctx context.Context) error { _, err := b.cl.OpenWelcome(ctx, req); return err }, nil
	}
	return nil, fmt.Errorf("unknown op %q", op)
}

// cleanup deletes the signature keys the bench made and, with them, the
// KeyPackages they signed.
func (b *daemonBench) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var errs []error
	for _, id := range b.sigs {
		if _, err := b.cl.DeleteKey(ctx, &pb.DeleteKeyRequest{Id: id, Cascade: true}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: deleting %d of its %d signature keys failed; first: %w", len(errs), len(b.sigs), errs[0])
	}
	return nil
}
