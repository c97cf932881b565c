package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/mlsops"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits on request sizes. They bound the daemon's memory per request and
// are far above what MLS messages of real groups need.
const (
	MaxContentSize    = 1 << 20 // SignWithLabel content
	MaxCiphertextSize = 1 << 20 // DecryptWithLabel context and ciphertext, each
	MaxWelcomeSize    = 4 << 20 // the gRPC default message limit
	MaxIdentitySize   = 4 << 10 // basic credential identity
	MaxCertChainSize  = 64 << 10
	MaxExtensionsSize = 64 << 10
	MaxKeyPackages    = 1000
	// MaxRequestSize is the gRPC receive limit: the largest field (a
	// Welcome) with room for the rest of its message. A larger request is
	// refused by gRPC before it reaches a handler, so clients should check
	// their inputs against the field limits first (mlskeyctl does).
	MaxRequestSize = MaxWelcomeSize + 64<<10
	// MaxResponseSize bounds a response, CreateKeyPackages' in particular
	// (its size is checked before any key is made); it is the gRPC send
	// limit and a quarter of the Go client's receive limit.
	MaxResponseSize = 16 << 20
	// MaxStreamsPerConn bounds concurrent calls on one connection, and
	// MaxInFlightPerUID those of one uid over all its connections.
	MaxStreamsPerConn = 16
	MaxInFlightPerUID = 32
	// MinKeyPackageLifetime is the shortest KeyPackage lifetime served: a
	// KeyPackage must outlive its upload and a peer's fetch, and lifetimes
	// are whole seconds, so a nanosecond would make one that is already
	// expired.
	MinKeyPackageLifetime = time.Hour
	maxKeyIDLen           = 64
	defaultPageSize       = 100
	maxPageSize           = 1000
)

// Options configure the service.
type Options struct {
	Version string
	Logger  *slog.Logger
	// DefaultLifetime is the KeyPackage lifetime when a request names
	// none; MaxLifetime bounds what a request may ask for (RFC 9420 §10:
	// applications must bound KeyPackage lifetimes).
	DefaultLifetime, MaxLifetime time.Duration
	Now                          func() time.Time
	// Access names the admins; Policy what callers may do.
	Access Access
	Policy Policy
	// OnRateLimited, when set, is told of every call refused by the rate
	// limit (for the metrics).
	OnRateLimited func()
}

// Service implements mlskey.v1.KeyService over a keystore.
type Service struct {
	pb.UnimplementedKeyServiceServer
	store    *keystore.Store
	opts     Options
	log      *slog.Logger
	owners   *ownerLocks
	inflight *inflight
	boot     startup // startup.go: nil store until Ready
	// policy is replaced whole on reload (SetPolicy).
	policy atomic.Pointer[policyState]
}

// NewService returns the KeyService for store. A nil store makes a service
// that is still starting (see Ready).
func NewService(store *keystore.Store, opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DefaultLifetime == 0 {
		opts.DefaultLifetime = 90 * 24 * time.Hour
	}
	if opts.MaxLifetime == 0 {
		opts.MaxLifetime = 365 * 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	svc := &Service{store: store, opts: opts, log: opts.Logger,
		owners: newOwnerLocks(), inflight: &inflight{max: MaxInFlightPerUID}}
	svc.policy.Store(newPolicyState(opts.Policy, opts.DefaultLifetime, opts.MaxLifetime, opts.Now, nil))
	if store != nil {
		svc.boot.ready.Store(true)
	}
	return svc
}

func lookupSuite(field string, id uint32) (*mls.Suite, error) {
	if id == 0 || id > 0xffff {
		return nil, invalid(field, "cipher suite %d is not valid", id)
	}
	s, err := mls.LookupSuite(mls.CipherSuite(id))
	if err != nil {
		return nil, invalid(field, "cipher suite 0x%04x is not supported", id)
	}
	return s, nil
}

// allowedSuite is lookupSuite with the policy's allowed suites applied.
func (s *Service) allowedSuite(field string, id uint32) (*mls.Suite, error) {
	su, err := lookupSuite(field, id)
	if err != nil {
		return nil, err
	}
	if !s.pol().Policy.suiteAllowed(uint16(su.ID)) {
		return nil, status.Errorf(codes.PermissionDenied, "%s: policy does not allow cipher suite 0x%04x", field, id)
	}
	return su, nil
}

// quoteShort quotes a caller's string for an error message, cut to a
// few dozen bytes: the message goes to the caller, the daemon's log and
// the audit record.
func quoteShort(v string) string {
	const max = 40
	if len(v) <= max {
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("%q… (%d bytes)", strings.ToValidUTF8(v[:max], ""), len(v))
}

func checkKeyID(field, id string) error {
	if id == "" {
		return invalid(field, "required")
	}
	if len(id) > maxKeyIDLen {
		return invalid(field, "longer than %d characters", maxKeyIDLen)
	}
	if _, err := hex.DecodeString(id); err != nil {
		return invalid(field, "%q is not a key id", id)
	}
	return nil
}

func (s *Service) GetInfo(ctx context.Context, _ *pb.GetInfoRequest) (*pb.GetInfoResponse, error) {
	dev := s.store.Device()
	h := s.store.Health()
	resp := &pb.GetInfoResponse{
		Backend: dev.Backend, Device: dev.Device, Version: s.opts.Version,
		InstallationId: s.store.Installation(), DeviceUri: dev.URI,
		DeviceState: string(h.State), DeviceLastError: h.LastError, DeviceRecoveries: h.Recoveries,
	}
	if !h.Since.IsZero() {
		resp.DeviceStateSince = h.Since.Unix()
	}
	strays, missing, err := s.quarantined()
	if err != nil {
		return nil, statusOf("catalog", err)
	}
	resp.StrayKeys, resp.MissingKeys = uint32(len(strays)), uint32(len(missing))
	// Key ids are shown to admins only, like the keys themselves.
	if c, err := s.callerOf(ctx); err == nil && c.admin {
		resp.StrayKeyIds, resp.MissingKeyIds = strays, missing
	}
	level := func(role keystore.Role, alg string) (pb.Protection, string) {
		p, why := s.store.Availability(role, keystore.Algorithm(alg))
		if p == "" {
			return pb.Protection_PROTECTION_UNSPECIFIED, why
		}
		return protectionToPB[p], why
	}
	pol := s.pol()
	for _, su := range mls.Suites() {
		// A suite the policy forbids is listed, so callers learn why it
		// cannot be used, but with no role available.
		if !pol.suiteAllowed(uint16(su.ID)) {
			resp.Suites = append(resp.Suites, &pb.SuiteSupport{CipherSuite: uint32(su.ID), Name: su.Name, RefusedByPolicy: true})
			continue
		}
		ss := &pb.SuiteSupport{CipherSuite: uint32(su.ID), Name: su.Name}
		ss.Signature, ss.SignatureNote = level(keystore.RoleSignature, su.SignatureAlgorithm)
		ss.Init, ss.InitNote = level(keystore.RoleInit, su.KEMAlgorithm)
		ss.LeafEncryption, ss.LeafEncryptionNote = level(keystore.RoleLeafEncryption, su.KEMAlgorithm)
		resp.Suites = append(resp.Suites, ss)
	}
	return resp, nil
}

func (s *Service) CreateSignatureKey(ctx context.Context, req *pb.CreateSignatureKeyRequest) (*pb.Key, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	su, err := s.allowedSuite("cipher_suite", req.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	own, err := c.newKeyOwner(req.OwnerUid)
	if err != nil {
		return nil, err
	}
	r, err := s.store.Create(ctx, keystore.KeySpec{
		Role: keystore.RoleSignature, Suite: uint16(su.ID),
		Algorithm: keystore.Algorithm(su.SignatureAlgorithm), Owner: own,
	})
	if err != nil {
		return nil, statusOf("cipher_suite", err)
	}
	noteKeys(ctx, r.ID)
	return keyToPB(r), nil
}

func (s *Service) GetKey(ctx context.Context, req *pb.GetKeyRequest) (*pb.Key, error) {
	r, _, err := s.key(ctx, "id", req.GetId())
	if err != nil {
		return nil, err
	}
	return keyToPB(r), nil
}

func (s *Service) ListKeys(ctx context.Context, req *pb.ListKeysRequest) (*pb.ListKeysResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	var f keystore.Filter
	if !c.admin {
		f.Owner = ownerString(c.UID)
	}
	if req.OwnerUid != nil {
		if !c.admin && req.GetOwnerUid() != c.UID {
			return nil, status.Error(codes.PermissionDenied, "owner_uid: only admins may list another owner's keys")
		}
		f.Owner = ownerString(req.GetOwnerUid())
	}
	if req.GetRole() != pb.KeyRole_KEY_ROLE_UNSPECIFIED {
		r, ok := roleFromPB[req.GetRole()]
		if !ok {
			return nil, invalid("role", "unknown role %d", req.GetRole())
		}
		f.Role = r
	}
	if req.GetState() != pb.KeyState_KEY_STATE_UNSPECIFIED {
		st, ok := stateFromPB[req.GetState()]
		if !ok {
			return nil, invalid("state", "unknown state %d", req.GetState())
		}
		f.State = st
	}
	if req.GetCipherSuite() != 0 {
		su, err := lookupSuite("cipher_suite", req.GetCipherSuite())
		if err != nil {
			return nil, err
		}
		f.Suite = uint16(su.ID)
	}
	size, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	recs, next, err := s.store.List(f, req.GetPageToken(), size)
	if err != nil {
		return nil, statusOf("catalog", err)
	}
	resp := &pb.ListKeysResponse{NextPageToken: next}
	for _, r := range recs {
		resp.Keys = append(resp.Keys, keyToPB(r))
	}
	return resp, nil
}

func (s *Service) DeleteKey(ctx context.Context, req *pb.DeleteKeyRequest) (*pb.Key, error) {
	k, _, err := s.key(ctx, "id", req.GetId())
	if err != nil {
		return nil, err
	}
	r, cascaded, err := s.store.Delete(ctx, k.ID, req.GetCascade())
	if err != nil {
		return nil, statusOf("id", err)
	}
	for _, c := range cascaded {
		noteKeys(ctx, c.ID)
	}
	return keyToPB(r), nil
}

func (s *Service) SignWithLabel(ctx context.Context, req *pb.SignWithLabelRequest) (*pb.SignWithLabelResponse, error) {
	// Held shared until the signature is made: a DeleteKey waits for it.
	defer s.store.Share(req.GetKeyId())()
	r, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if !slices.Contains(mls.SignatureLabels, req.GetLabel()) {
		return nil, invalid("label", "%s is not an RFC 9420 signature label (want one of %v)", quoteShort(req.GetLabel()), mls.SignatureLabels)
	}
	if len(req.GetContent()) > MaxContentSize {
		return nil, invalid("content", "%d bytes is over the limit of %d", len(req.GetContent()), MaxContentSize)
	}
	if !s.pol().Policy.labelAllowed(r, req.GetLabel()) {
		return nil, status.Errorf(codes.PermissionDenied, "label: policy does not allow %q for key %s", req.GetLabel(), r.ID)
	}
	if r.Role == keystore.RoleSignature && s.pol().Policy.strict(r.ID) {
		if err := checkContent(ctx, r, req.GetLabel(), req.GetContent()); err != nil {
			return nil, err
		}
	}
	if err := r.Usable(keystore.RoleSignature); err != nil {
		return nil, statusOf("key_id", err)
	}
	sig, err := mlsops.SignWithLabel(ctx, s.store, r, req.GetLabel(), req.GetContent())
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	return &pb.SignWithLabelResponse{Signature: sig}, nil
}

func (s *Service) DecryptWithLabel(ctx context.Context, req *pb.DecryptWithLabelRequest) (*pb.DecryptWithLabelResponse, error) {
	defer s.store.Share(req.GetKeyId())()
	r, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if req.GetLabel() != mls.LabelUpdatePathNode {
		return nil, invalid("label", "%s is not served (only %q; Welcome secrets are opened with OpenWelcome)", quoteShort(req.GetLabel()), mls.LabelUpdatePathNode)
	}
	if len(req.GetContext()) > MaxCiphertextSize {
		return nil, invalid("context", "%d bytes is over the limit of %d", len(req.GetContext()), MaxCiphertextSize)
	}
	if len(req.GetCiphertext()) > MaxCiphertextSize {
		return nil, invalid("ciphertext", "%d bytes is over the limit of %d", len(req.GetCiphertext()), MaxCiphertextSize)
	}
	if !s.pol().Policy.labelAllowed(r, req.GetLabel()) {
		return nil, status.Errorf(codes.PermissionDenied, "label: policy does not allow %q for key %s", req.GetLabel(), r.ID)
	}
	su, err := mls.LookupSuite(mls.CipherSuite(r.Suite))
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	if err := su.ValidateHPKEPublicKey(req.GetKemOutput()); err != nil {
		return nil, invalid("kem_output", "%v", err)
	}
	if err := r.Usable(keystore.RoleLeafEncryption); err != nil {
		return nil, statusOf("key_id", err)
	}
	k, err := s.store.DecryptionKeyFor(ctx, r)
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	pt, err := su.DecryptWithLabel(k, req.GetLabel(), req.GetContext(), req.GetKemOutput(), req.GetCiphertext())
	if err != nil {
		return nil, decryptStatus("ciphertext", err)
	}
	return &pb.DecryptWithLabelResponse{Plaintext: pt}, nil
}

// decryptStatus keeps device failures apart from bad ciphertexts: the
// latter are the caller's fault, and say nothing more than that.
func decryptStatus(field string, err error) error {
	var de *keystore.DeviceError
	if errors.As(err, &de) || errors.Is(err, keystore.ErrInvalidPeerKey) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return statusOf(field, err)
	}
	return status.Errorf(codes.InvalidArgument, "%s: decryption failed", field)
}

func (s *Service) OpenWelcome(ctx context.Context, req *pb.OpenWelcomeRequest) (*pb.OpenWelcomeResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.GetWelcome()) == 0 {
		return nil, invalid("welcome", "required")
	}
	if len(req.GetWelcome()) > MaxWelcomeSize {
		return nil, invalid("welcome", "%d bytes is over the limit of %d", len(req.GetWelcome()), MaxWelcomeSize)
	}
	msg, err := mls.UnmarshalMLSMessage(req.GetWelcome())
	if err != nil {
		return nil, invalid("welcome", "%v", err)
	}
	w := msg.Welcome
	if w == nil {
		return nil, invalid("welcome", "MLSMessage has wire format %d, not welcome", msg.WireFormat)
	}
	su, err := mls.LookupSuite(w.CipherSuite)
	if err != nil {
		return nil, invalid("welcome.cipher_suite", "cipher suite 0x%04x is not supported", uint16(w.CipherSuite))
	}
	rec, entry, err := mlsops.FindEntry(s.store, w, c.mayUse,
		func(r *keystore.Record) { noteDenied(ctx, "KeyPackage belongs to "+r.Owner) })
	if errors.Is(err, mlsops.ErrNoEntry) {
		return nil, status.Error(codes.NotFound, "welcome: "+err.Error())
	}
	if err != nil {
		return nil, statusOf("welcome", err)
	}
	if !s.pol().Policy.labelAllowed(rec, mls.LabelWelcome) {
		return nil, status.Errorf(codes.PermissionDenied, "welcome: policy does not allow %q for init key %s", mls.LabelWelcome, rec.ID)
	}
	if rec.Suite != uint16(w.CipherSuite) {
		return nil, invalid("welcome.cipher_suite", "0x%04x, but the KeyPackage was made for 0x%04x", uint16(w.CipherSuite), rec.Suite)
	}
	if err := su.ValidateHPKEPublicKey(entry.KEMOutput); err != nil {
		return nil, invalid("welcome.secrets.kem_output", "%v", err)
	}
	gs, gi, err := mlsops.OpenWelcome(ctx, s.store, su, w, entry, rec)
	if err != nil {
		var ge *mlsops.GroupInfoError
		if errors.As(err, &ge) {
			return nil, status.Errorf(codes.InvalidArgument, "welcome.encrypted_group_info: %v", ge.Err)
		}
		if errors.Is(err, keystore.ErrNotActive) {
			if cur, gerr := s.store.Get(rec.ID); gerr == nil && cur.RevokedOnDevice() {
				return nil, status.Errorf(codes.FailedPrecondition, "welcome: the init key of KeyPackage %x was destroyed: %s", rec.KeyPackageRef, cur.RetiredWhy)
			} else if gerr == nil && cur.State == keystore.StateDestroyed {
				return nil, status.Errorf(codes.FailedPrecondition, "welcome: the init key of KeyPackage %x was deleted", rec.KeyPackageRef)
			}
			return nil, status.Errorf(codes.FailedPrecondition, "welcome: the init key of KeyPackage %x was already used", rec.KeyPackageRef)
		}
		if errors.Is(err, keystore.ErrEpochDestroyed) {
			return nil, status.Errorf(codes.FailedPrecondition, "welcome: the init key %s of KeyPackage %x is gone: %v", rec.ID, rec.KeyPackageRef, keystore.ErrEpochDestroyed)
		}
		return nil, decryptStatus("welcome.secrets", err)
	}
	noteKeys(ctx, rec.ID)
	resp := &pb.OpenWelcomeResponse{
		KeyPackageRef: rec.KeyPackageRef,
		InitKeyId:     rec.ID,
		CipherSuite:   uint32(w.CipherSuite),
		GroupSecrets:  groupSecretsToPB(gs),
	}
	if gi != nil {
		resp.GroupInfo = gi.Marshal()
		resp.GroupId = gi.GroupContext.GroupID
		resp.Epoch = gi.GroupContext.Epoch
	}
	return resp, nil
}

func (s *Service) CreateKeyPackages(ctx context.Context, req *pb.CreateKeyPackagesRequest) (*pb.CreateKeyPackagesResponse, error) {
	return s.createKeyPackages(ctx, req, nil)
}

// CreateKeyPackagesStream is CreateKeyPackages with progress events: the
// same checks and batch, mlsops' progress reports passed on as they come.
func (s *Service) CreateKeyPackagesStream(req *pb.CreateKeyPackagesRequest, stream grpc.ServerStreamingServer[pb.CreateKeyPackagesEvent]) error {
	resp, err := s.createKeyPackages(stream.Context(), req, func(done, total int) {
		// A failed send means the client is gone; the cancelled context
		// stops the batch.
		_ = stream.Send(&pb.CreateKeyPackagesEvent{Event: &pb.CreateKeyPackagesEvent_Progress{
			Progress: &pb.CreateKeyPackagesProgress{Done: uint32(done), Total: uint32(total)}}})
	})
	if err != nil {
		return err
	}
	// Once committed, the call has succeeded, as a unary call whose client
	// left before the response: its audit record names the new keys, and
	// ListKeyPackages finds them.
	if err := stream.Send(&pb.CreateKeyPackagesEvent{Event: &pb.CreateKeyPackagesEvent_Result{Result: resp}}); err != nil {
		s.log.Info("KeyPackages created but the result could not be sent", "key_packages", len(resp.GetKeyPackages()), "err", err)
	}
	return nil
}

// createKeyPackages serves both CreateKeyPackages RPCs; progress, if set,
// hears how far the batch is.
func (s *Service) createKeyPackages(ctx context.Context, req *pb.CreateKeyPackagesRequest, progress func(done, total int)) (*pb.CreateKeyPackagesResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	su, err := s.allowedSuite("cipher_suite", req.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	n := int(req.GetCount())
	refill := req.GetEnsureTarget() > 0
	switch {
	case refill && req.GetEnsureTarget() > MaxKeyPackages:
		return nil, invalid("ensure_target", "%d is not in 1..%d", req.GetEnsureTarget(), MaxKeyPackages)
	case refill && req.GetEnsureMin() >= req.GetEnsureTarget():
		return nil, invalid("ensure_min", "%d is not below ensure_target %d", req.GetEnsureMin(), req.GetEnsureTarget())
	case refill && req.GetLastResort():
		return nil, invalid("ensure_target", "refills regular KeyPackages, not last-resort ones")
	case !refill && req.GetEnsureMin() > 0:
		return nil, invalid("ensure_min", "needs ensure_target")
	case !refill && (n < 1 || n > MaxKeyPackages):
		return nil, invalid("count", "%d is not in 1..%d", req.GetCount(), MaxKeyPackages)
	}
	cred, err := s.credential(req.GetCredential())
	if err != nil {
		return nil, err
	}
	// One policy for the whole call, even if a reload replaces it.
	pol := s.pol()
	lifetime := pol.defaultLifetime
	if d := req.GetLifetime(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalid("lifetime", "%v", err)
		}
		lifetime = d.AsDuration()
		if lifetime < MinKeyPackageLifetime {
			return nil, invalid("lifetime", "%v is under the minimum of %v (valid: %v to %v)", lifetime, MinKeyPackageLifetime, MinKeyPackageLifetime, pol.maxLifetime)
		}
	}
	if lifetime > pol.maxLifetime {
		return nil, invalid("lifetime", "%v is over the maximum of %v (valid: %v to %v)", lifetime, pol.maxLifetime, MinKeyPackageLifetime, pol.maxLifetime)
	}
	caps, err := extraCapabilities(req)
	if err != nil {
		return nil, err
	}
	leafExt, err := extensions("leaf_extensions", req.GetLeafExtensions())
	if err != nil {
		return nil, err
	}
	kpExt, err := extensions("key_package_extensions", req.GetKeyPackageExtensions())
	if err != nil {
		return nil, err
	}
	// Every extension type used is also listed in capabilities, so the
	// union must fit the decoders' limit; checked here, before any key is
	// made, rather than by NewKeyPackage after.
	listed := map[uint16]bool{mls.ExtensionLastResort: true}
	for _, t := range caps.Extensions {
		listed[t] = true
	}
	for _, list := range [][]mls.Extension{leafExt, kpExt} {
		for _, e := range list {
			listed[e.Type] = true
		}
	}
	if len(listed) > mls.MaxCapabilityEntries {
		return nil, invalid("extra_extensions", "with the extensions used, %d extension types would be listed in capabilities, more than %d", len(listed), mls.MaxCapabilityEntries)
	}
	sizeN := n
	if refill {
		sizeN = int(req.GetEnsureTarget()) // the most a refill creates
	}
	if err := checkResponseSize(sizeN, cred, caps, leafExt, kpExt); err != nil {
		return nil, err
	}
	if cred.Type == mls.CredentialTypeX509 && req.GetSignatureKeyId() == "" {
		return nil, invalid("credential.x509", "needs signature_key_id: a certificate can only name an existing key")
	}

	own, err := c.newKeyOwner(req.OwnerUid)
	if err != nil {
		return nil, err
	}
	var before int
	if refill {
		if n, before, err = s.refillCount(own, uint16(su.ID), cred, req); err != nil {
			return nil, err
		}
		if n == 0 {
			return &pb.CreateKeyPackagesResponse{UnusedBefore: uint32(before)}, nil
		}
	}
	// Where the policy bounds outstanding KeyPackages, the count and the
	// commit of new ones happen under the owner's lock: concurrent
	// requests could otherwise each see room for their batch and together
	// pass the maximum.
	if pol.MaxOutstandingKeyPackages > 0 || pol.lastResortLimit() > 0 {
		unlock, err := s.owners.lock(ctx, own)
		if err != nil {
			return nil, statusOf("count", err)
		}
		defer unlock()
		if err := s.checkOutstanding(&pol.Policy, own, n, req.GetLastResort()); err != nil {
			return nil, err
		}
	}
	var sigRec *keystore.Record
	if id := req.GetSignatureKeyId(); id != "" {
		// Held shared until the KeyPackages are committed, so a DeleteKey
		// of the key sees them (and refuses or cascades) or they fail.
		defer s.store.Share(id)()
		r, _, err := s.key(ctx, "signature_key_id", id)
		if err != nil {
			return nil, err
		}
		if r.Owner != own {
			return nil, invalid("signature_key_id", "key %s belongs to %s, not to %s", id, r.Owner, own)
		}
		if err := r.Usable(keystore.RoleSignature); err != nil {
			return nil, statusOf("signature_key_id", err)
		}
		sigRec = r
		if sigRec.Suite != uint16(su.ID) {
			return nil, invalid("signature_key_id", "key %s is for cipher suite 0x%04x, not 0x%04x", id, sigRec.Suite, uint16(su.ID))
		}
	}
	// The signature key signs a LeafNodeTBS and a KeyPackageTBS for every
	// KeyPackage, so both labels must be allowed for it (for a new key, by
	// the role's list) exactly as if it were asked through SignWithLabel.
	policyKey := sigRec
	if policyKey == nil {
		policyKey = &keystore.Record{Role: keystore.RoleSignature}
	}
	for _, l := range []string{mls.LabelLeafNodeTBS, mls.LabelKeyPackageTBS} {
		if !pol.labelAllowed(policyKey, l) {
			what := "new signature keys"
			if sigRec != nil {
				what = "key " + sigRec.ID
			}
			return nil, status.Errorf(codes.PermissionDenied, "signature_key_id: policy does not allow %q for %s, and a KeyPackage needs it", l, what)
		}
	}
	res, err := mlsops.CreateKeyPackages(ctx, s.store, mlsops.KeyPackageParams{
		Suite: su, Count: n, Credential: cred,
		CapabilitiesFor: func() mls.Capabilities { return capabilitiesFor(&pol.Policy, req, caps) },
		LeafExtensions:  leafExt, Extensions: kpExt,
		Lifetime:   mlsops.LifetimeFrom(s.opts.Now(), lifetime),
		LastResort: req.GetLastResort(), Owner: own, SignatureKey: sigRec,
		Progress: progress,
	})
	if err != nil {
		return nil, statusOf(mlsops.Field(err, "cipher_suite"))
	}
	resp := &pb.CreateKeyPackagesResponse{UnusedBefore: uint32(before)}
	for _, kp := range res.KeyPackages {
		resp.KeyPackages = append(resp.KeyPackages, &pb.CreatedKeyPackage{
			KeyPackage:          kp.Message,
			KeyPackageRef:       kp.Ref,
			InitKeyId:           kp.InitKeyID,
			LeafEncryptionKeyId: kp.LeafKeyID,
		})
	}
	if res.NewSignatureKey {
		noteKeys(ctx, res.SignatureKey.ID)
	}
	for _, kp := range res.KeyPackages {
		noteKeys(ctx, kp.InitKeyID, kp.LeafKeyID)
	}
	resp.SignatureKey = keyToPB(res.SignatureKey)
	return resp, nil
}

// checkOutstanding applies the policy's bounds on unused KeyPackages: the
// ordinary ones, and the last-resort ones against their own, small limit
// (they are reusable, so a client needs one per suite, not dozens). The
// caller holds the owner's lock.
func (s *Service) checkOutstanding(pol *Policy, own string, n int, lastResort bool) error {
	max, kind := pol.MaxOutstandingKeyPackages, "unused KeyPackages"
	if lastResort {
		max, kind = pol.lastResortLimit(), "unused last-resort KeyPackages"
	}
	if max <= 0 {
		return nil
	}
	counts, err := s.store.UnusedKeyPackages(own, 0)
	if err != nil {
		return statusOf("catalog", err)
	}
	have := 0
	for _, c := range counts {
		if lastResort {
			have += c.LastResort
		} else {
			have += c.Regular
		}
	}
	if have+n > max {
		return status.Errorf(codes.ResourceExhausted, "count: %s has %d %s; %d more would pass the policy's maximum of %d", own, have, kind, n, max)
	}
	return nil
}

func (s *Service) credential(c *pb.Credential) (mls.Credential, error) {
	switch v := c.GetCredential().(type) {
	case *pb.Credential_BasicIdentity:
		if len(v.BasicIdentity) == 0 {
			return mls.Credential{}, invalid("credential.basic_identity", "empty")
		}
		if len(v.BasicIdentity) > MaxIdentitySize {
			return mls.Credential{}, invalid("credential.basic_identity", "over %d bytes", MaxIdentitySize)
		}
		return mls.Credential{Type: mls.CredentialTypeBasic, Identity: v.BasicIdentity}, nil
	case *pb.Credential_X509_:
		certs := v.X509.GetCertificates()
		if len(certs) == 0 {
			return mls.Credential{}, invalid("credential.x509.certificates", "empty")
		}
		total := 0
		for i, der := range certs {
			total += len(der)
			if _, err := x509.ParseCertificate(der); err != nil {
				return mls.Credential{}, invalid("credential.x509.certificates", "certificate %d: %v", i, err)
			}
		}
		if total > MaxCertChainSize {
			return mls.Credential{}, invalid("credential.x509.certificates", "over %d bytes", MaxCertChainSize)
		}
		return mls.Credential{Type: mls.CredentialTypeX509, Certificates: certs}, nil
	}
	return mls.Credential{}, invalid("credential", "required: basic_identity or x509")
}

func u16s(field string, vs []uint32) ([]uint16, error) {
	// Required entries are added to the caller's, so a few places are kept.
	if len(vs) > mls.MaxCapabilityEntries-8 {
		return nil, invalid(field, "%d entries, more than %d", len(vs), mls.MaxCapabilityEntries-8)
	}
	out := make([]uint16, 0, len(vs))
	for _, v := range vs {
		if v > 0xffff {
			return nil, invalid(field, "%d is not a 16-bit value", v)
		}
		out = append(out, uint16(v))
	}
	return out, nil
}

func extraCapabilities(req *pb.CreateKeyPackagesRequest) (mls.Capabilities, error) {
	var c mls.Capabilities
	var err error
	if c.CipherSuites, err = u16s("extra_cipher_suites", req.GetExtraCipherSuites()); err != nil {
		return c, err
	}
	if c.Extensions, err = u16s("extra_extensions", req.GetExtraExtensions()); err != nil {
		return c, err
	}
	if c.Proposals, err = u16s("extra_proposals", req.GetExtraProposals()); err != nil {
		return c, err
	}
	if c.Credentials, err = u16s("extra_credentials", req.GetExtraCredentials()); err != nil {
		return c, err
	}
	return c, nil
}

// keyPackageOverhead bounds what a KeyPackage and its response entry hold
// besides the caller's credential, extensions and capabilities: three
// public keys (at most 133 bytes each), two signatures (at most 139), the
// KeyPackageRef, two key ids, the lifetime, the required capabilities and
// every length prefix and protobuf tag, with room to spare.
const keyPackageOverhead = 2048

// keyPackageSize is an upper bound of one CreatedKeyPackage's encoded
// size, from the request alone.
func keyPackageSize(cred mls.Credential, caps mls.Capabilities, leafExt, kpExt []mls.Extension) int {
	size := keyPackageOverhead + len(cred.Identity)
	for _, c := range cred.Certificates {
		size += len(c) + 4
	}
	for _, list := range [][]mls.Extension{leafExt, kpExt} {
		for _, e := range list {
			// The type, the data's length prefix, and the type again in
			// capabilities.extensions.
			size += len(e.Data) + 8
		}
	}
	size += 2 * (len(caps.CipherSuites) + len(caps.Extensions) + len(caps.Proposals) + len(caps.Credentials))
	return size
}

// checkResponseSize refuses, before any key is made, a batch whose
// response could pass MaxResponseSize: gRPC would refuse to send it, and
// the keys, made and committed, would reach nobody.
func checkResponseSize(n int, cred mls.Credential, caps mls.Capabilities, leafExt, kpExt []mls.Extension) error {
	each := keyPackageSize(cred, caps, leafExt, kpExt)
	if total := n * each; total+keyPackageOverhead > MaxResponseSize {
		return invalid("count", "%d KeyPackages of up to %d bytes each (credential %d, extensions %d+%d) make a response of up to %d bytes, over the limit of %d; ask for at most %d",
			n, each, credSize(cred), extSize(leafExt), extSize(kpExt), total, MaxResponseSize, (MaxResponseSize-keyPackageOverhead)/each)
	}
	return nil
}

func credSize(c mls.Credential) int {
	n := len(c.Identity)
	for _, der := range c.Certificates {
		n += len(der)
	}
	return n
}

func extSize(exts []mls.Extension) int {
	n := 0
	for _, e := range exts {
		n += len(e.Data)
	}
	return n
}

func extensions(field string, in []*pb.Extension) ([]mls.Extension, error) {
	if len(in) > mls.MaxExtensions-1 {
		// One place is kept for last_resort_key_package.
		return nil, invalid(field, "%d extensions, more than %d", len(in), mls.MaxExtensions-1)
	}
	var out []mls.Extension
	total := 0
	for _, e := range in {
		if e.GetType() > 0xffff {
			return nil, invalid(field, "type %d is not a 16-bit value", e.GetType())
		}
		total += len(e.GetData())
		out = append(out, mls.Extension{Type: uint16(e.GetType()), Data: e.GetData()})
	}
	if total > MaxExtensionsSize {
		return nil, invalid(field, "over %d bytes", MaxExtensionsSize)
	}
	return out, nil
}

// MaxNonceSize is the largest AttestKey nonce: a TPM's qualifying data holds
// at most one SHA-512 digest.
const MaxNonceSize = 64

func (s *Service) AttestKey(ctx context.Context, req *pb.AttestKeyRequest) (*pb.AttestKeyResponse, error) {
	k, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	defer s.store.Share(k.ID)()
	if n := len(req.GetNonce()); n == 0 || n > MaxNonceSize {
		return nil, invalid("nonce", "%d bytes, want 1..%d", n, MaxNonceSize)
	}
	a, err := s.store.Attest(ctx, k.ID, req.GetNonce())
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	return &pb.AttestKeyResponse{
		Format:                  a.Format,
		Statement:               a.Statement,
		Signature:               a.Signature,
		AttestationKey:          a.AttestationKey,
		KeyPublicArea:           a.KeyPublicArea,
		EndorsementCertificates: a.Certificates,
		EndorsementKey:          a.EndorsementKey,
	}, nil
}

// page checks a listing's page size and token: a size of 0 means the
// default, one over the maximum is capped, and the token is the key id the
// previous page ended after.
func page(pageSize int32, token string) (int, error) {
	size := int(pageSize)
	switch {
	case size < 0:
		return 0, invalid("page_size", "negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	if token != "" {
		if err := checkKeyID("page_token", token); err != nil {
			return 0, err
		}
	}
	return size, nil
}
