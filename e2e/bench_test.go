package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/tpm/swtpm"
)

// Benchmarks through the real daemon binary over its Unix socket: the
// figures a client sees, to compare with the raw device figures of the
// pkcs11 package's benchmarks. scripts/bench.sh runs them.

func benchDaemon(b *testing.B) pb.KeyServiceClient {
	d := startDaemon(b, b.TempDir())
	b.Cleanup(d.stop)
	return d.client()
}

func BenchmarkDaemonSignWithLabel(b *testing.B) {
	c := benchDaemon(b)
	for _, suite := range []uint32{1, 2} {
		k, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: suite})
		if err != nil {
			b.Fatal(err)
		}
		content := tbs(b, "FramedContentTBS", uint16(suite), k.PublicKey, string(make([]byte, 200)))
		req := &pb.SignWithLabelRequest{KeyId: k.Id, Label: "FramedContentTBS", Content: content}
		name := map[uint32]string{1: "ed25519", 2: "p256"}[suite]
		b.Run(name+"/serial", func(b *testing.B) {
			for b.Loop() {
				if _, err := c.SignWithLabel(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.SetParallelism(4)
			b.RunParallel(func(p *testing.PB) {
				for p.Next() {
					if _, err := c.SignWithLabel(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkDaemonDecryptWithLabel(b *testing.B) {
	c := benchDaemon(b)
	for _, suite := range []uint32{1, 2} {
		kp := createKPs(b, c, suite, 1).KeyPackages[0]
		leaf, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.LeafEncryptionKeyId})
		if err != nil {
			b.Fatal(err)
		}
		su, _ := mls.LookupSuite(mls.CipherSuite(suite))
		kem, ct, err := su.EncryptWithLabel(leaf.PublicKey, "UpdatePathNode", []byte("ctx"), make([]byte, 32))
		if err != nil {
			b.Fatal(err)
		}
		req := &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", Context: []byte("ctx"), KemOutput: kem, Ciphertext: ct}
		name := map[uint32]string{1: "x25519", 2: "p256"}[suite]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.DecryptWithLabel(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDaemonCreateKeyPackages reports the cost per KeyPackage of a
// batch of 20: two token keys generated, two signatures, one commit.
func BenchmarkDaemonCreateKeyPackages(b *testing.B) {
	c := benchDaemon(b)
	const n = 20
	for _, suite := range []uint32{1, 2} {
		sig, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: suite})
		if err != nil {
			b.Fatal(err)
		}
		name := map[uint32]string{1: "suite1", 2: "suite2"}[suite]
		b.Run(name, func(b *testing.B) {
			start := time.Now()
			for b.Loop() {
				_, err := c.CreateKeyPackages(context.Background(), &pb.CreateKeyPackagesRequest{
					CipherSuite: suite, SignatureKeyId: sig.Id, Count: n,
					Credential: &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("bench")}},
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "keypackages/s")
		})
	}
}

// BenchmarkDaemonGetKey is the floor of every call: a gRPC round trip over
// the socket and one catalog read, no device work.
func BenchmarkDaemonGetKey(b *testing.B) {
	c := benchDaemon(b)
	k, err := c.CreateSignatureKey(context.Background(), &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: k.Id}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDaemonTPM measures SignWithLabel and DecryptWithLabel (P-256,
// suite 2) through the daemon on the TPM simulator and on swtpm, to set
// beside the tpm package's benchmarks of go-tpm on a loaded key and of
// load–sign–flush.
func BenchmarkDaemonTPM(b *testing.B) {
	for _, name := range []string{"simulator", "swtpm"} {
		b.Run(name, func(b *testing.B) {
			args := []string{"--backend", "tpm"}
			if name == "swtpm" {
				args = append(args, "--tpm", swtpm.Start(b, b.TempDir()).Device())
			}
			d := startDaemon(b, b.TempDir(), args...)
			b.Cleanup(d.stop)
			c := d.client()
			kp := createKPs(b, c, 2, 1)
			sign := &pb.SignWithLabelRequest{KeyId: kp.SignatureKey.Id, Label: "FramedContentTBS",
				Content: tbs(b, "FramedContentTBS", 2, kp.SignatureKey.PublicKey, string(make([]byte, 200)))}
			b.Run("sign-p256", func(b *testing.B) {
				for b.Loop() {
					if _, err := c.SignWithLabel(context.Background(), sign); err != nil {
						b.Fatal(err)
					}
				}
			})
			leaf, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.KeyPackages[0].LeafEncryptionKeyId})
			if err != nil {
				b.Fatal(err)
			}
			su, _ := mls.LookupSuite(2)
			kem, ct, err := su.EncryptWithLabel(leaf.PublicKey, "UpdatePathNode", nil, make([]byte, 32))
			if err != nil {
				b.Fatal(err)
			}
			dec := &pb.DecryptWithLabelRequest{KeyId: leaf.Id, Label: "UpdatePathNode", KemOutput: kem, Ciphertext: ct}
			b.Run("decrypt-p256", func(b *testing.B) {
				for b.Loop() {
					if _, err := c.DecryptWithLabel(context.Background(), dec); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
