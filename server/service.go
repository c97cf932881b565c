package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
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
	maxKeyIDLen       = 64
	defaultPageSize   = 100
	maxPageSize       = 1000
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
}

// Service implements mlskey.v1.KeyService over a keystore.
type Service struct {
	pb.UnimplementedKeyServiceServer
	store *keystore.Store
	opts  Options
	log   *slog.Logger
	limit *limiter
	boot  startup // start-up.go: nil store until Ready
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
	if d := time.Duration(opts.Policy.KeyPackageDefaultLifetime); d > 0 {
		opts.DefaultLifetime = d
	}
	if d := time.Duration(opts.Policy.KeyPackageMaxLifetime); d > 0 {
		opts.MaxLifetime = d
	}
	// A maximum below the default lowers the default with it.
	opts.DefaultLifetime = min(opts.DefaultLifetime, opts.MaxLifetime)
	svc := &Service{store: store, opts: opts, log: opts.Logger,
		limit: &limiter{rate: opts.Policy.RateLimit, now: opts.Now}}
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
	if !s.opts.Policy.suiteAllowed(uint16(su.ID)) {
		return nil, status.Errorf(codes.PermissionDenied, "%s: policy does not allow cipher suite 0x%04x", field, id)
	}
	return su, nil
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
		DeviceState: string(h.State), DeviceLastError: h.LastError, DeviceRecoveries: h.Recoveries,
	}
	if !h.Since.IsZero() {
		resp.DeviceStateSince = h.Since.Unix()
	}
	level := func(role keystore.Role, alg string) (pb.Protection, string) {
		p, why := s.store.Availability(role, keystore.Algorithm(alg))
		if p == "" {
			return pb.Protection_PROTECTION_UNSPECIFIED, why
		}
		return protectionToPB[p], why
	}
	for _, su := range mls.Suites() {
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
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size", "negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	if t := req.GetPageToken(); t != "" {
		if err := checkKeyID("page_token", t); err != nil {
			return nil, err
		}
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
	if _, _, err := s.key(ctx, "id", req.GetId()); err != nil {
		return nil, err
	}
	r, err := s.store.Delete(ctx, req.GetId())
	if err != nil {
		return nil, statusOf("id", err)
	}
	return keyToPB(r), nil
}

func (s *Service) SignWithLabel(ctx context.Context, req *pb.SignWithLabelRequest) (*pb.SignWithLabelResponse, error) {
	r, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if !slices.Contains(mls.SignatureLabels, req.GetLabel()) {
		return nil, invalid("label", "%q is not an RFC 9420 signature label (want one of %v)", req.GetLabel(), mls.SignatureLabels)
	}
	if len(req.GetContent()) > MaxContentSize {
		return nil, invalid("content", "%d bytes is over the limit of %d", len(req.GetContent()), MaxContentSize)
	}
	if !s.opts.Policy.labelAllowed(r, req.GetLabel()) {
		return nil, status.Errorf(codes.PermissionDenied, "label: policy does not allow %q for key %s", req.GetLabel(), r.ID)
	}
	if r.Role == keystore.RoleSignature && s.opts.Policy.strict(r.ID) {
		if err := checkContent(ctx, r, req.GetLabel(), req.GetContent()); err != nil {
			return nil, err
		}
	}
	if err := r.Usable(keystore.RoleSignature); err != nil {
		return nil, statusOf("key_id", err)
	}
	signer, err := s.store.SignerFor(ctx, r)
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	su, err := mls.LookupSuite(mls.CipherSuite(r.Suite))
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	sig, err := su.SignWithLabel(signer, req.GetLabel(), req.GetContent())
	if err != nil {
		return nil, statusOf("key_id", err)
	}
	return &pb.SignWithLabelResponse{Signature: sig}, nil
}

func (s *Service) DecryptWithLabel(ctx context.Context, req *pb.DecryptWithLabelRequest) (*pb.DecryptWithLabelResponse, error) {
	r, _, err := s.key(ctx, "key_id", req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if req.GetLabel() != mls.LabelUpdatePathNode {
		return nil, invalid("label", "%q is not served (only %q; Welcome secrets are opened with OpenWelcome)", req.GetLabel(), mls.LabelUpdatePathNode)
	}
	if len(req.GetContext()) > MaxCiphertextSize {
		return nil, invalid("context", "%d bytes is over the limit of %d", len(req.GetContext()), MaxCiphertextSize)
	}
	if len(req.GetCiphertext()) > MaxCiphertextSize {
		return nil, invalid("ciphertext", "%d bytes is over the limit of %d", len(req.GetCiphertext()), MaxCiphertextSize)
	}
	if !s.opts.Policy.labelAllowed(r, req.GetLabel()) {
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
	// The first entry addressed to one of our KeyPackages wins; a Welcome
	// names each new member once.
	var rec *keystore.Record
	var entry *mls.EncryptedGroupSecrets
	for i := range w.Secrets {
		r, err := s.store.ByKeyPackageRef(w.Secrets[i].NewMember)
		if errors.Is(err, keystore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, statusOf("welcome", err)
		}
		if !c.mayUse(r) {
			noteDenied(ctx, "KeyPackage belongs to "+r.Owner)
			continue // another owner's KeyPackage: as if it were not ours
		}
		rec, entry = r, &w.Secrets[i]
		break
	}
	if rec == nil {
		return nil, status.Error(codes.NotFound, "welcome: no entry is addressed to a KeyPackage of this daemon")
	}
	if !s.opts.Policy.labelAllowed(rec, mls.LabelWelcome) {
		return nil, status.Errorf(codes.PermissionDenied, "welcome: policy does not allow %q for init key %s", mls.LabelWelcome, rec.ID)
	}
	if rec.Suite != uint16(w.CipherSuite) {
		return nil, invalid("welcome.cipher_suite", "0x%04x, but the KeyPackage was made for 0x%04x", uint16(w.CipherSuite), rec.Suite)
	}
	if err := su.ValidateHPKEPublicKey(entry.KEMOutput); err != nil {
		return nil, invalid("welcome.secrets.kem_output", "%v", err)
	}
	var gs *mls.GroupSecrets
	var gi *mls.GroupInfo
	_, err = s.store.UseInitKey(ctx, rec.ID, func(k any) error {
		var err error
		if gs, err = su.OpenGroupSecrets(w, entry, k); err != nil {
			return err
		}
		// The GroupInfo is decrypted before the init key is consumed, so a
		// Welcome whose GroupInfo does not open costs the caller nothing.
		if len(gs.PSKs) == 0 {
			if gi, err = su.DecryptGroupInfo(w, gs, nil); err != nil {
				return errGroupInfo{err}
			}
		}
		return nil
	})
	if err != nil {
		var ge errGroupInfo
		if errors.As(err, &ge) {
			return nil, status.Errorf(codes.InvalidArgument, "welcome.encrypted_group_info: %v", ge.err)
		}
		if errors.Is(err, keystore.ErrNotActive) {
			return nil, status.Errorf(codes.FailedPrecondition, "welcome: the init key of KeyPackage %x was already used", rec.KeyPackageRef)
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

type errGroupInfo struct{ err error }

func (e errGroupInfo) Error() string { return e.err.Error() }

func (s *Service) CreateKeyPackages(ctx context.Context, req *pb.CreateKeyPackagesRequest) (*pb.CreateKeyPackagesResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	su, err := s.allowedSuite("cipher_suite", req.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	n := int(req.GetCount())
	if n < 1 || n > MaxKeyPackages {
		return nil, invalid("count", "%d is not in 1..%d", req.GetCount(), MaxKeyPackages)
	}
	cred, err := s.credential(req.GetCredential())
	if err != nil {
		return nil, err
	}
	lifetime := s.opts.DefaultLifetime
	if d := req.GetLifetime(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalid("lifetime", "%v", err)
		}
		lifetime = d.AsDuration()
		if lifetime <= 0 {
			return nil, invalid("lifetime", "must be positive")
		}
	}
	if lifetime > s.opts.MaxLifetime {
		return nil, invalid("lifetime", "%v is over the maximum of %v", lifetime, s.opts.MaxLifetime)
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
	if cred.Type == mls.CredentialTypeX509 && req.GetSignatureKeyId() == "" {
		return nil, invalid("credential.x509", "needs signature_key_id: a certificate can only name an existing key")
	}

	own, err := c.newKeyOwner(req.OwnerUid)
	if err != nil {
		return nil, err
	}
	if max := s.opts.Policy.MaxOutstandingKeyPackages; max > 0 && !req.GetLastResort() {
		have, err := s.store.Count(keystore.Filter{Role: keystore.RoleInit, State: keystore.StateActive, Owner: own},
			func(r *keystore.Record) bool { return !r.LastResort })
		if err != nil {
			return nil, statusOf("catalog", err)
		}
		if have+n > max {
			return nil, status.Errorf(codes.ResourceExhausted, "count: %s has %d unused KeyPackages; %d more would pass the policy's maximum of %d", own, have, n, max)
		}
	}
	batch := s.store.NewBatch()
	defer batch.Abort(ctx)
	var specs []keystore.KeySpec
	var sigRec *keystore.Record
	if id := req.GetSignatureKeyId(); id != "" {
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
	} else {
		specs = append(specs, keystore.KeySpec{Role: keystore.RoleSignature, Suite: uint16(su.ID),
			Algorithm: keystore.Algorithm(su.SignatureAlgorithm), Owner: own})
	}
	kem := keystore.Algorithm(su.KEMAlgorithm)
	for range n {
		specs = append(specs,
			keystore.KeySpec{Role: keystore.RoleInit, Suite: uint16(su.ID), Algorithm: kem, Owner: own},
			keystore.KeySpec{Role: keystore.RoleLeafEncryption, Suite: uint16(su.ID), Algorithm: kem, Owner: own})
	}
	recs, err := batch.Generate(ctx, specs)
	if err != nil {
		return nil, statusOf("cipher_suite", err)
	}
	if sigRec == nil {
		sigRec, recs = recs[0], recs[1:]
	}
	signer, err := s.store.SignerFor(ctx, sigRec)
	if err != nil {
		return nil, statusOf("signature_key_id", err)
	}
	// not_before lies an hour back so that peers with slightly slow clocks
	// accept the KeyPackage at once.
	now := s.opts.Now()
	lt := mls.Lifetime{NotBefore: uint64(now.Add(-time.Hour).Unix()), NotAfter: uint64(now.Add(lifetime).Unix())}
	resp := &pb.CreateKeyPackagesResponse{}
	for i := range n {
		initRec, leafRec := recs[2*i], recs[2*i+1]
		kp, err := mls.NewKeyPackage(mls.KeyPackageParams{
			Suite:          su.ID,
			InitKey:        initRec.PublicKey,
			EncryptionKey:  leafRec.PublicKey,
			SignatureKey:   sigRec.PublicKey,
			Credential:     cred,
			Capabilities:   caps,
			LeafExtensions: leafExt,
			Extensions:     kpExt,
			Lifetime:       lt,
			LastResort:     req.GetLastResort(),
		}, signer)
		if err != nil {
			return nil, statusOf("key_package", err)
		}
		ref := su.KeyPackageRef(kp.Marshal())
		for _, r := range []*keystore.Record{initRec, leafRec} {
			r.KeyPackageRef, r.SignatureKeyID = ref, sigRec.ID
		}
		initRec.LastResort = req.GetLastResort()
		resp.KeyPackages = append(resp.KeyPackages, &pb.CreatedKeyPackage{
			KeyPackage:          mls.KeyPackageMessage(kp),
			KeyPackageRef:       ref,
			InitKeyId:           initRec.ID,
			LeafEncryptionKeyId: leafRec.ID,
		})
	}
	if err := batch.Commit(); err != nil {
		return nil, statusOf("catalog", err)
	}
	if req.GetSignatureKeyId() == "" {
		noteKeys(ctx, sigRec.ID)
	}
	for _, kp := range resp.KeyPackages {
		noteKeys(ctx, kp.InitKeyId, kp.LeafEncryptionKeyId)
	}
	resp.SignatureKey = keyToPB(sigRec)
	return resp, nil
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

func extensions(field string, in []*pb.Extension) ([]mls.Extension, error) {
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
	if _, _, err := s.key(ctx, "key_id", req.GetKeyId()); err != nil {
		return nil, err
	}
	if n := len(req.GetNonce()); n == 0 || n > MaxNonceSize {
		return nil, invalid("nonce", "%d bytes, want 1..%d", n, MaxNonceSize)
	}
	a, err := s.store.Attest(ctx, req.GetKeyId(), req.GetNonce())
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
