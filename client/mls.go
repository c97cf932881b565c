package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mlskeyd/mlskeyd/mls"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// KeyPackageOptions says what CreateMLSKeyPackages asks for. The
// capabilities describe the MLS engine that will use the KeyPackages: the
// daemon derives the suite, the credential type and the extensions it adds
// itself; list what else the engine supports (RFC 9420 §7.2: not the
// default proposal types 1-7 and extension types 1-5).
type KeyPackageOptions struct {
	// Suite is required unless SignatureKeyID is set.
	Suite mls.CipherSuite
	// SignatureKeyID signs with an existing key; empty creates one.
	SignatureKeyID string
	// Identity makes a basic credential; X509Chain (DER, end-entity
	// first, whose key must be the signature key's) an X.509 one.
	Identity  []byte
	X509Chain [][]byte

	CipherSuites []mls.CipherSuite
	Extensions   []uint16
	Proposals    []uint16
	Credentials  []uint16

	LeafExtensions       []mls.Extension
	KeyPackageExtensions []mls.Extension
	// Lifetime from now; 0 is the daemon's default.
	Lifetime time.Duration
	// Count is 1..1000; 0 means 1.
	Count      int
	LastResort bool
	// NoGrease leaves out the GREASE values the daemon otherwise adds to
	// the capabilities (RFC 9420 §13.5).
	NoGrease bool
	// Progress, if set, is told how far the batch is (see
	// CreateKeyPackagesWithProgress).
	Progress func(done, total int)
}

// KeyPackage is one KeyPackage the daemon created.
type KeyPackage struct {
	// KeyPackage is the decoded structure; Message its MLSMessage encoding
	// as the daemon made it, to publish.
	KeyPackage *mls.KeyPackage
	Message    []byte
	Ref        []byte
	// Ids of the init and leaf encryption keys, both in the device.
	InitKeyID, LeafEncryptionKeyID string
}

// CreateMLSKeyPackages has the daemon create KeyPackages and returns them
// decoded, with the signature key that signed them.
func (c *Client) CreateMLSKeyPackages(ctx context.Context, o KeyPackageOptions) (*SignatureKey, []KeyPackage, error) {
	cred := &mlskeyv1.Credential{}
	switch {
	case o.Identity != nil && o.X509Chain != nil:
		return nil, nil, fmt.Errorf("mlskeyd client: give Identity or X509Chain, not both")
	case o.X509Chain != nil:
		cred.Credential = &mlskeyv1.Credential_X509_{X509: &mlskeyv1.Credential_X509{Certificates: o.X509Chain}}
	case o.Identity != nil:
		cred.Credential = &mlskeyv1.Credential_BasicIdentity{BasicIdentity: o.Identity}
	default:
		return nil, nil, fmt.Errorf("mlskeyd client: Identity or X509Chain is required")
	}
	suite := o.Suite
	if suite == 0 && o.SignatureKeyID != "" {
		k, err := c.SignatureKey(ctx, o.SignatureKeyID)
		if err != nil {
			return nil, nil, err
		}
		suite = k.Suite()
	}
	count := o.Count
	if count == 0 {
		count = 1
	}
	req := &mlskeyv1.CreateKeyPackagesRequest{
		CipherSuite:          uint32(suite),
		SignatureKeyId:       o.SignatureKeyID,
		Credential:           cred,
		ExtraExtensions:      widen(o.Extensions),
		ExtraProposals:       widen(o.Proposals),
		ExtraCredentials:     widen(o.Credentials),
		LeafExtensions:       extensions(o.LeafExtensions),
		KeyPackageExtensions: extensions(o.KeyPackageExtensions),
		Count:                uint32(count),
		LastResort:           o.LastResort,
		NoGrease:             o.NoGrease,
	}
	for _, s := range o.CipherSuites {
		if s != suite {
			req.ExtraCipherSuites = append(req.ExtraCipherSuites, uint32(s))
		}
	}
	if o.Lifetime > 0 {
		req.Lifetime = durationpb.New(o.Lifetime)
	}
	resp, err := c.CreateKeyPackagesWithProgress(ctx, req, o.Progress)
	if err != nil {
		return nil, nil, err
	}
	sig, err := c.signatureKey(resp.GetSignatureKey())
	if err != nil {
		return nil, nil, err
	}
	out := make([]KeyPackage, 0, len(resp.GetKeyPackages()))
	for i, kp := range resp.GetKeyPackages() {
		m, err := mls.UnmarshalMLSMessage(kp.GetKeyPackage())
		if err != nil || m.KeyPackage == nil {
			return sig, out, fmt.Errorf("mlskeyd client: KeyPackage %d from the daemon does not decode: %v", i, err)
		}
		out = append(out, KeyPackage{
			KeyPackage: m.KeyPackage, Message: kp.GetKeyPackage(), Ref: kp.GetKeyPackageRef(),
			InitKeyID: kp.GetInitKeyId(), LeafEncryptionKeyID: kp.GetLeafEncryptionKeyId(),
		})
	}
	return sig, out, nil
}

// CreateKeyPackagesWithProgress is CreateKeyPackages (refill mode too)
// through CreateKeyPackagesStream: progress, called on the calling
// goroutine, hears the daemon's count of device operations done of total
// as the batch proceeds, at most about every 100 ms; the response is the
// one CreateKeyPackages returns. With a nil progress, or a daemon without
// the streaming call, it makes the unary call (progress is then not
// called). As with the unary call, cancelling ctx before the response
// leaves no KeyPackage unless the batch had already been committed.
func (c *Client) CreateKeyPackagesWithProgress(ctx context.Context, req *mlskeyv1.CreateKeyPackagesRequest, progress func(done, total int)) (*mlskeyv1.CreateKeyPackagesResponse, error) {
	if progress == nil {
		return c.CreateKeyPackages(ctx, req)
	}
	// Ends the stream when this returns, whatever the daemon still sends.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.CreateKeyPackagesStream(ctx, req)
	if err != nil {
		return nil, typed(err)
	}
	heard := false
	for {
		ev, err := st.Recv()
		switch {
		case err == io.EOF:
			return nil, errors.New("mlskeyd client: CreateKeyPackagesStream ended without a result")
		case err != nil && !heard && status.Code(err) == codes.Unimplemented:
			// A daemon from before the streaming call; nothing was done.
			return c.CreateKeyPackages(ctx, req)
		case err != nil:
			return nil, typed(err)
		}
		heard = true
		switch e := ev.GetEvent().(type) {
		case *mlskeyv1.CreateKeyPackagesEvent_Progress:
			progress(int(e.Progress.GetDone()), int(e.Progress.GetTotal()))
		case *mlskeyv1.CreateKeyPackagesEvent_Result:
			return e.Result, nil
		}
	}
}

func widen(v []uint16) []uint32 {
	var out []uint32
	for _, x := range v {
		out = append(out, uint32(x))
	}
	return out
}

func extensions(v []mls.Extension) []*mlskeyv1.Extension {
	var out []*mlskeyv1.Extension
	for _, e := range v {
		out = append(out, &mlskeyv1.Extension{Type: uint32(e.Type), Data: e.Data})
	}
	return out
}

// Joined is what OpenMLSWelcome returns: enough for an engine to build the
// group state (RFC 9420 §12.4.3.1).
type Joined struct {
	Suite         mls.CipherSuite
	KeyPackageRef []byte
	InitKeyID     string
	GroupSecrets  *mls.GroupSecrets
	// GroupInfo is nil when the Welcome uses PSKs: decrypt it with
	// Suite.DecryptGroupInfo and the PSK secret.
	GroupInfo *mls.GroupInfo
	GroupID   []byte
	Epoch     uint64
}

// OpenMLSWelcome has the daemon open welcome (an MLSMessage) with the init
// key of one of its KeyPackages, consuming the key unless the KeyPackage is
// last-resort. A second call for the same init key fails with ErrConsumed.
// The GroupInfo's signature is not checked here: the engine checks it
// against the signer's leaf in the ratchet tree.
func (c *Client) OpenMLSWelcome(ctx context.Context, welcome []byte) (*Joined, error) {
	r, err := c.OpenWelcome(ctx, &mlskeyv1.OpenWelcomeRequest{Welcome: welcome})
	if err != nil {
		return nil, err
	}
	gs := &mls.GroupSecrets{JoinerSecret: r.GetGroupSecrets().GetJoinerSecret()}
	if r.GetGroupSecrets().PathSecret != nil {
		gs.PathSecret = append([]byte{}, r.GetGroupSecrets().GetPathSecret()...)
	}
	for _, p := range r.GetGroupSecrets().GetPsks() {
		gs.PSKs = append(gs.PSKs, mls.PreSharedKeyID{
			PSKType: uint8(p.GetPskType()), PSKID: p.GetPskId(), Usage: uint8(p.GetResumptionUsage()),
			PSKGroupID: p.GetPskGroupId(), PSKEpoch: p.GetPskEpoch(), Nonce: p.GetPskNonce(),
		})
	}
	j := &Joined{
		Suite: mls.CipherSuite(r.GetCipherSuite()), KeyPackageRef: r.GetKeyPackageRef(), InitKeyID: r.GetInitKeyId(),
		GroupSecrets: gs, GroupID: r.GetGroupId(), Epoch: r.GetEpoch(),
	}
	if len(r.GetGroupInfo()) > 0 {
		gi, err := mls.UnmarshalGroupInfo(r.GetGroupInfo())
		if err != nil {
			return j, fmt.Errorf("mlskeyd client: the daemon's GroupInfo does not decode: %w", err)
		}
		j.GroupInfo = gi
	}
	return j, nil
}
