package mlsops

import (
	"context"
	"crypto/x509"
	"sync"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
)

// KeyPackageParams is a validated request for KeyPackages.
type KeyPackageParams struct {
	Suite      *mls.Suite
	Count      int
	Credential mls.Credential
	// Capabilities beyond the suite's own; extensions as given.
	Capabilities mls.Capabilities
	// CapabilitiesFor, if set, is called for each KeyPackage instead (the
	// daemon adds fresh GREASE values to each).
	CapabilitiesFor func() mls.Capabilities
	LeafExtensions  []mls.Extension
	Extensions      []mls.Extension
	Lifetime        mls.Lifetime
	LastResort      bool
	Owner           string
	// SignatureKey is an existing, usable signature key of Owner and
	// Suite (the caller holds its lock shared until CreateKeyPackages
	// returns); nil makes a new one in the same batch.
	SignatureKey *keystore.Record
	// Progress, if set, is told how far the batch is: done of total device
	// operations, the key generations and then the KeyPackage signatures.
	// It is called with 0 at the start, then at most every
	// ProgressInterval, and always when done reaches total, which happens
	// before the commit. Calls never overlap and done never decreases; a
	// slow Progress slows the batch.
	Progress func(done, total int)
}

// ProgressInterval is how often at most KeyPackageParams.Progress hears of a
// batch between its start and its end: often enough for a progress bar,
// rarely enough to cost nothing beside a device operation.
const ProgressInterval = 100 * time.Millisecond

// progress counts a batch's operations for KeyPackageParams.Progress and
// passes on the first, the last, and one every ProgressInterval between.
type progress struct {
	mu          sync.Mutex
	report      func(done, total int)
	done, total int
	last        time.Time
}

func newProgress(report func(done, total int), total int) *progress {
	if report == nil {
		return nil
	}
	p := &progress{report: report, total: total, last: time.Now()}
	report(0, total)
	return p
}

// add counts one operation done; it is safe on a nil progress.
func (p *progress) add() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	if now := time.Now(); p.done == p.total || now.Sub(p.last) >= ProgressInterval {
		p.last = now
		p.report(p.done, p.total)
	}
}

// CreatedKeyPackage is one new KeyPackage.
type CreatedKeyPackage struct {
	Message       []byte // the KeyPackage as an MLSMessage
	Ref           []byte // its KeyPackageRef
	InitKeyID     string
	LeafKeyID     string
	InitKey, Leaf *keystore.Record
}

// KeyPackageResult is what CreateKeyPackages made.
type KeyPackageResult struct {
	SignatureKey    *keystore.Record
	NewSignatureKey bool
	KeyPackages     []CreatedKeyPackage
}

// LifetimeFrom returns a lifetime from now to now+d. not_before lies an
// hour back so that peers with slightly slow clocks accept the KeyPackage
// at once.
func LifetimeFrom(now time.Time, d time.Duration) mls.Lifetime {
	return mls.Lifetime{NotBefore: uint64(now.Add(-time.Hour).Unix()), NotAfter: uint64(now.Add(d).Unix())}
}

// CreateKeyPackages makes p.Count KeyPackages in one keystore batch: their
// init and leaf encryption keys (and the signature key if p has none) are
// generated on the device, each KeyPackage is signed, and the catalog
// commits every key in one transaction. Either all exist afterwards or
// none does.
func CreateKeyPackages(ctx context.Context, store *keystore.Store, p KeyPackageParams) (*KeyPackageResult, error) {
	su := p.Suite
	batch := store.NewBatch()
	defer batch.Abort(ctx)
	var specs []keystore.KeySpec
	sigRec := p.SignatureKey
	if sigRec == nil {
		specs = append(specs, keystore.KeySpec{Role: keystore.RoleSignature, Suite: uint16(su.ID),
			Algorithm: keystore.Algorithm(su.SignatureAlgorithm), Owner: p.Owner})
	}
	kem := keystore.Algorithm(su.KEMAlgorithm)
	for range p.Count {
		specs = append(specs,
			keystore.KeySpec{Role: keystore.RoleInit, Suite: uint16(su.ID), Algorithm: kem, Owner: p.Owner},
			keystore.KeySpec{Role: keystore.RoleLeafEncryption, Suite: uint16(su.ID), Algorithm: kem, Owner: p.Owner})
	}
	prog := newProgress(p.Progress, len(specs)+p.Count)
	if prog != nil {
		batch.OnGenerated(prog.add)
	}
	recs, err := batch.Generate(ctx, specs)
	if err != nil {
		return nil, fieldErr("cipher_suite", err)
	}
	out := &KeyPackageResult{NewSignatureKey: sigRec == nil}
	if sigRec == nil {
		sigRec, recs = recs[0], recs[1:]
	}
	out.SignatureKey = sigRec
	signer, err := store.SignerFor(ctx, sigRec)
	if err != nil {
		return nil, fieldErr("signature_key_id", err)
	}
	notAfter := time.Unix(int64(p.Lifetime.NotAfter), 0).UTC()
	identity := CredentialIdentity(p.Credential)
	// Capabilities are drawn in order (fresh GREASE for each); the
	// signing, a device operation per KeyPackage and a check of it in Go,
	// runs on signWorkers goroutines, so that the daemon's part of one
	// KeyPackage overlaps the device's part of the next.
	capsOf := make([]mls.Capabilities, p.Count)
	for i := range capsOf {
		capsOf[i] = p.Capabilities
		if p.CapabilitiesFor != nil {
			capsOf[i] = p.CapabilitiesFor()
		}
	}
	kps := make([]*mls.KeyPackage, p.Count)
	errs := make([]error, p.Count)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(signWorkers, p.Count) {
		wg.Go(func() {
			for i := range next {
				signKeyPackage(store, i, errs, func() error {
					var err error
					kps[i], err = mls.NewKeyPackage(mls.KeyPackageParams{
						Suite:          su.ID,
						InitKey:        recs[2*i].PublicKey,
						EncryptionKey:  recs[2*i+1].PublicKey,
						SignatureKey:   sigRec.PublicKey,
						Credential:     p.Credential,
						Capabilities:   capsOf[i],
						LeafExtensions: p.LeafExtensions,
						Extensions:     p.Extensions,
						Lifetime:       p.Lifetime,
						LastResort:     p.LastResort,
					}, signer)
					if err == nil {
						prog.add()
					}
					return err
				})
			}
		})
	}
	for i := range p.Count {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	// Checked after the last progress report: a caller that gives up on
	// hearing it still finds nothing committed.
	if err := ctx.Err(); err != nil {
		return nil, fieldErr("count", err)
	}
	for i := range p.Count {
		if errs[i] != nil {
			return nil, fieldErr("key_package", errs[i])
		}
		kp := kps[i]
		initRec, leafRec := recs[2*i], recs[2*i+1]
		ref := su.KeyPackageRef(kp.Marshal())
		for _, r := range []*keystore.Record{initRec, leafRec} {
			r.KeyPackageRef, r.SignatureKeyID, r.NotAfter = ref, sigRec.ID, notAfter
			r.Identity = identity
		}
		initRec.LastResort = p.LastResort
		out.KeyPackages = append(out.KeyPackages, CreatedKeyPackage{
			Message: mls.KeyPackageMessage(kp), Ref: ref,
			InitKeyID: initRec.ID, LeafKeyID: leafRec.ID, InitKey: initRec, Leaf: leafRec,
		})
	}
	if err := batch.Commit(); err != nil {
		return nil, fieldErr("catalog", err)
	}
	return out, nil
}

// signWorkers is how many KeyPackages of one batch are signed at once.
const signWorkers = 4

// CredentialIdentity names who a KeyPackage is for: a basic credential's
// identity, an X.509 credential's leaf subject.
func CredentialIdentity(c mls.Credential) string {
	if c.Type == mls.CredentialTypeX509 && len(c.Certificates) > 0 {
		if cert, err := x509.ParseCertificate(c.Certificates[0]); err == nil {
			return cert.Subject.String()
		}
		return ""
	}
	return string(c.Identity)
}

// signKeyPackage runs one worker's step for KeyPackage i; a panic in it
// (the signer, the progress report) fails that KeyPackage, and with it the
// batch, instead of the daemon.
func signKeyPackage(store *keystore.Store, i int, errs []error, f func() error) {
	defer store.RecoverTo("sign key package", &errs[i])
	errs[i] = f()
}
