package server

import (
	"context"
	"log/slog"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/bench"
	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	"github.com/mlskeyd/mlskeyd/pkcs11"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// BenchmarkRPCSignWithLabel is a P-256 SignWithLabel through the whole RPC
// path in one process (client, socket, peer credentials, audit, service,
// SoftHSM), so that `-cpuprofile` sees the daemon's side and the client's
// together: go test -run '^$' -bench RPCSign -cpuprofile cpu.out ./server/
func BenchmarkRPCSignWithLabel(b *testing.B) {
	if pkcs11.FindSoftHSM() == "" {
		b.Skip("SoftHSM 2 not installed")
	}
	dir := b.TempDir()
	h, err := pkcs11.InitSoftHSM(dir, "rpcbench")
	if err != nil {
		b.Fatal(err)
	}
	pin := pkcs11.RandomPIN()
	if err := h.InitToken(pkcs11.RandomPIN(), pin); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	be, err := pkcs11.Open(ctx, h.Config(pin))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	store, err := keystore.Open(ctx, filepath.Join(dir, "catalog.db"), be, keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	alog, err := audit.Open(filepath.Join(dir, "audit.log"), audit.Options{Sync: audit.SyncNever}) // the daemon's default
	if err != nil {
		b.Fatal(err)
	}
	defer alog.Close()
	log := slog.New(slog.DiscardHandler)
	gs, _ := NewGRPCServer(NewService(store, Options{Logger: log}), log, &Auditor{Log: alog, Logger: log})
	sock := filepath.Join(dir, "run", "mlskeyd.sock")
	l, err := Listen(sock, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(l)
	defer gs.Stop()
	cl, err := client.Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	k, err := cl.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 2})
	if err != nil {
		b.Fatal(err)
	}
	su, _ := mls.LookupSuite(2)
	req := &pb.SignWithLabelRequest{KeyId: k.Id, Label: mls.LabelFramedContentTBS, Content: bench.FramedContentTBS(su)}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := cl.SignWithLabel(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Eight callers on one connection, as mlskeyctl bench --concurrency 8
	// does: the figure the device/daemon ratio is about.
	b.Run("parallel8", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := cl.SignWithLabel(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// reportCPU adds the process's CPU time (user and system, both sides of
// the socket and the token included) per operation: on a shared machine
// it varies far less than wall time, and it is what competes with the
// device for the same cores.
func reportCPU(b *testing.B) func() {
	var r0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	return func() {
		var r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu := time.Duration(r1.Utime.Nano()-r0.Utime.Nano()+r1.Stime.Nano()-r0.Stime.Nano()) * time.Nanosecond
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	}
}
