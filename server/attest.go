package server

import (
	"context"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// Bounds for ActivateCredential: a TPMT_PUBLIC of an RSA 2048 or ECC EK
// is under 400 bytes, a TPM2B_ID_OBJECT holds an HMAC and an encrypted
// digest (under 140 bytes), and an encrypted secret is at most an RSA
// 4096 ciphertext or an ECC point.
const (
	maxEndorsementKeySize = 1024
	maxCredentialBlobSize = 256
	maxCredentialSecret   = 1024
)

func (s *Service) ActivateCredential(ctx context.Context, req *pb.ActivateCredentialRequest) (*pb.ActivateCredentialResponse, error) {
	if _, _, err := s.key(ctx, "key_id", req.GetKeyId()); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		v    []byte
		max  int
	}{
		{"endorsement_key", req.GetEndorsementKey(), maxEndorsementKeySize},
		{"credential_blob", req.GetCredentialBlob(), maxCredentialBlobSize},
		{"secret", req.GetSecret(), maxCredentialSecret},
	} {
		if n := len(f.v); n == 0 || n > f.max {
			return nil, invalid(f.name, "%d bytes, want 1..%d", n, f.max)
		}
	}
	out, err := s.store.ActivateCredential(ctx, req.GetKeyId(), req.GetEndorsementKey(), req.GetCredentialBlob(), req.GetSecret())
	if err != nil {
		return nil, statusOf("credential_blob", err)
	}
	return &pb.ActivateCredentialResponse{CertInfo: out}, nil
}
