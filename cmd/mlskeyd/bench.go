package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
)

// benchSettings are the flags of `mlskeyd bench` beyond the daemon's own
// device settings. They have no environment or config-file form.
var benchSettings = []*setting{
	{name: "op", def: "sign", usage: "operation: sign, open-welcome, keypackage-create (batches of 100; ops count KeyPackages) or key-create"},
	{name: "suite", def: "1", usage: "MLS cipher suite number"},
	{name: "concurrency", def: "1", usage: "concurrent callers"},
	{name: "duration", def: "10s", usage: "how long to start new calls"},
	{name: "json", def: "false", usage: "print the result as one JSON object", isBool: true},
}

// runBench is `mlskeyd bench`: an operation run in-process on the
// configured device, through the keystore and the MLS layer the daemon
// uses but without RPC, caller checks or audit, on keys it creates in a
// temporary catalog and destroys at the end. A daemon may be running on
// the same device: the bench never lists or touches keys it did not make.
func runBench(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := newSettings()
	for _, st := range benchSettings {
		c := *st
		c.value, c.from = c.def, "default"
		cfg.list = append(cfg.list, &c)
		cfg.byName[c.name] = &c
	}
	env := func(name string) string {
		for _, st := range benchSettings {
			if name == envName(st.name) {
				return ""
			}
		}
		return getenv(name)
	}
	if err := cfg.parse(args, env, stdout); err != nil {
		return err
	}
	o, asJSON, err := benchOptions(cfg)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	su, err := mls.LookupSuite(mls.CipherSuite(o.Suite))
	if err != nil {
		return fmt.Errorf("--suite %d: %w", o.Suite, err)
	}
	c, err := checkSettings(cfg)
	if err != nil {
		return err
	}
	releaseDev := func() {}
	if c.dev {
		if releaseDev, err = setUpDev(cfg, c.state, c.backend, log); err != nil {
			return err
		}
	}
	defer releaseDev()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	be, err := openBackend(ctx, cfg, c, getenv, log, nil)
	releaseDev()
	if err != nil {
		return err
	}
	defer be.Close()
	tmp, err := os.MkdirTemp("", "mlskeyd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	own := ownKeysOnly(be)
	store, err := keystore.Open(ctx, filepath.Join(tmp, "catalog.db"), own, keystore.Options{Logger: log, HPKEProtection: c.hpke})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := destroyAll(store); cerr != nil && err == nil {
			err = cerr
		}
		epoch := store.Epoch()
		if cerr := store.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := destroyEpoch(own, epoch); cerr != nil && err == nil {
			err = cerr
		}
	}()
	call, err := benchCall(ctx, store, su, o.Op)
	if err != nil {
		return fmt.Errorf("bench %s: setting up: %w", o.Op, err)
	}
	o.OnError = func(err error) { log.Warn("bench call failed", "op", o.Op, "err", err) }
	r := bench.Run(ctx, o, call)
	if asJSON {
		if err := json.NewEncoder(stdout).Encode(r); err != nil {
			return err
		}
	} else {
		r.Print(stdout)
	}
	if r.Ops == 0 && r.Errors > 0 {
		return fmt.Errorf("bench %s: every call failed (%d)", o.Op, r.Errors)
	}
	return nil
}

func benchOptions(cfg *settings) (bench.Options, bool, error) {
	o := bench.Options{Op: cfg.str("op"), OpsPerCall: 1}
	suite, err := strconv.ParseUint(cfg.str("suite"), 0, 16)
	if err != nil {
		return o, false, fmt.Errorf("--suite %q: want a cipher suite number", cfg.str("suite"))
	}
	o.Suite = uint16(suite)
	if o.Concurrency, err = cfg.int("concurrency", 1, 1024); err != nil {
		return o, false, err
	}
	if o.Duration, err = cfg.duration("duration", time.Millisecond, 24*time.Hour); err != nil {
		return o, false, err
	}
	asJSON, err := cfg.bool("json")
	if err != nil {
		return o, false, err
	}
	if o.Op == "keypackage-create" {
		o.OpsPerCall = bench.KeyPackageBatch
	}
	return o, asJSON, o.Check()
}

// benchCall prepares the keys op needs and returns one call of it. Each
// call does what the daemon's handler does after authorising the caller:
// sign reads the key from the catalog, checks the content strictly (the
// daemon's default) and signs; open-welcome finds the entry and opens it
// (a last-resort KeyPackage's, so nothing is consumed).
func benchCall(ctx context.Context, store *keystore.Store, su *mls.Suite, op string) (func(context.Context) error, error) {
	const owner = "bench"
	newSig := func() (*keystore.Record, error) {
		return store.Create(ctx, keystore.KeySpec{Role: keystore.RoleSignature, Suite: uint16(su.ID),
			Algorithm: keystore.Algorithm(su.SignatureAlgorithm), Owner: owner})
	}
	kps := func(ctx context.Context, sig *keystore.Record, n int, lastResort bool) (*mlsops.KeyPackageResult, error) {
		return mlsops.CreateKeyPackages(ctx, store, mlsops.KeyPackageParams{
			Suite: su, Count: n, Owner: owner, SignatureKey: sig, LastResort: lastResort,
			Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte("bench")},
			Lifetime:   mlsops.LifetimeFrom(time.Now(), time.Hour),
		})
	}
	switch op {
	case "key-create":
		return func(context.Context) error { _, err := newSig(); return err }, nil
	case "sign":
		sig, err := newSig()
		if err != nil {
			return nil, err
		}
		content := bench.FramedContentTBS(su)
		return func(ctx context.Context) error {
			defer store.Share(sig.ID)()
			r, err := store.Get(sig.ID)
			if err != nil {
				return err
			}
			if err := r.Usable(keystore.RoleSignature); err != nil {
				return err
			}
			if err := mlsops.CheckContent(r, mls.LabelFramedContentTBS, content); err != nil {
				return err
			}
			_, err = mlsops.SignWithLabel(ctx, store, r, mls.LabelFramedContentTBS, content)
			return err
		}, nil
	case "keypackage-create":
		sig, err := newSig()
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			defer store.Share(sig.ID)()
			_, err := kps(ctx, sig, bench.KeyPackageBatch, false)
			return err
		}, nil
	case "open-welcome":
		res, err := kps(ctx, nil, 1, true)
		if err != nil {
			return nil, err
		}
		kp := res.KeyPackages[0]
		welcome, err := bench.Welcome(su, kp.Ref, kp.InitKey.PublicKey)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			msg, err := mls.UnmarshalMLSMessage(welcome)
			if err != nil {
				return err
			}
			if msg.Welcome == nil {
				return errors.New("not a Welcome")
			}
			rec, entry, err := mlsops.FindEntry(store, msg.Welcome, nil, nil)
			if err != nil {
				return err
			}
			_, _, err = mlsops.OpenWelcome(ctx, store, su, msg.Welcome, entry, rec)
			return err
		}, nil
	}
	return nil, fmt.Errorf("unknown op %q", op)
}

// ownKeysOnly hides the device's Lister, its installation binding and
// every capability but plain sealing from the bench's store. Opening a
// new catalog on the device would otherwise reconcile the device against
// it (quarantining a running daemon's keys as strays) and bind the
// device's installation to a throw-away catalog.
func ownKeysOnly(be keystore.Backend) keystore.Backend {
	if w, ok := be.(benchWrapper); ok {
		return struct{ benchWrapper }{w}
	}
	if s, ok := be.(keystore.Sealer); ok {
		return struct {
			keystore.Backend
			keystore.Sealer
		}{be, s}
	}
	return struct{ keystore.Backend }{be}
}

// benchWrapper is what the bench needs of a device with wrapped keys:
// sealing epochs (of its own, destroyed at the end: benchEpochs) and the
// wrapping itself.
type benchWrapper interface {
	keystore.Backend
	keystore.Epocher
	keystore.Wrapper
	EpochsSupported() bool
}

// destroyEpoch destroys the bench catalog's epoch, whose device keys
// (sealing and wrapping) nothing else uses.
func destroyEpoch(be keystore.Backend, id string) error {
	ep, ok := be.(keystore.Epocher)
	if !ok || id == "" {
		return nil
	}
	if err := ep.DestroyEpoch(context.Background(), id); err != nil {
		return fmt.Errorf("bench: destroying its epoch keys: %w", err)
	}
	return nil
}

// destroyAll deletes every key the bench made: signature keys with their
// KeyPackages, then whatever is left active.
func destroyAll(store *keystore.Store) error {
	ctx := context.Background()
	var errs []error
	for _, role := range []keystore.Role{keystore.RoleSignature, keystore.RoleInit, keystore.RoleLeafEncryption} {
		for {
			recs, _, err := store.List(keystore.Filter{Role: role, State: keystore.StateActive}, "", 1000)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				break
			}
			for _, r := range recs {
				if _, _, err := store.Delete(ctx, r.ID, true); err != nil && !errors.Is(err, keystore.ErrNotActive) {
					errs = append(errs, err)
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("bench: destroying its keys: %w", errors.Join(errs...))
			}
		}
	}
	return nil
}
