package e2e

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// peakRSS is the daemon's VmHWM in kB.
func (d *daemon) peakRSS() string {
	f, err := os.Open("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// TestHostileRequests sends the requests of the resource-exhaustion report
// to the real daemon: each is refused early with a field error, and the
// audit log grows by one short record per call. Figures (peak RSS, audit
// growth, wall time) are logged for docs, never asserted.
func TestHostileRequests(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	c := d.client()
	ctx := context.Background()
	auditLog := filepath.Join(d.state, "audit.log")
	t.Logf("daemon peak RSS at start: %s", d.peakRSS())

	// A 4 MiB Welcome of empty entries.
	w := &mls.Welcome{CipherSuite: 1, EncryptedGroupInfo: []byte{1}}
	for range (4<<20 - 100) / 3 {
		w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{NewMember: []byte{}, KEMOutput: []byte{}, Ciphertext: []byte{}})
	}
	start := time.Now()
	_, err := c.OpenWelcome(ctx, &pb.OpenWelcomeRequest{Welcome: mls.WelcomeMessage(w)})
	t.Logf("4 MiB Welcome of %d empty entries: %v in %v; daemon peak RSS %s", len(w.Secrets), status.Code(err), time.Since(start), d.peakRSS())
	wantCode(t, "empty-entry Welcome", err, codes.InvalidArgument, "welcome")

	// A refused SignWithLabel with a 100 kB label.
	sig, err := c.CreateSignatureKey(ctx, &pb.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		t.Fatal(err)
	}
	before := fileSize(auditLog)
	_, err = c.SignWithLabel(ctx, &pb.SignWithLabelRequest{KeyId: sig.Id, Label: strings.Repeat("x", 100_000), Content: []byte{1}})
	wantCode(t, "100 kB label", err, codes.InvalidArgument, "label")
	grew := fileSize(auditLog) - before
	t.Logf("SignWithLabel with a 100 kB label: audit log +%d bytes, error of %d bytes", grew, len(status.Convert(err).Message()))
	if grew > 1024 {
		t.Errorf("audit log grew by %d bytes for one refused call", grew)
	}

	// 1000 KeyPackages with 64 KiB of extensions: refused before any key
	// is made.
	start = time.Now()
	_, err = c.CreateKeyPackages(ctx, &pb.CreateKeyPackagesRequest{CipherSuite: 1, Count: 1000,
		Credential:     &pb.Credential{Credential: &pb.Credential_BasicIdentity{BasicIdentity: []byte("bob")}},
		LeafExtensions: []*pb.Extension{{Type: 0xf000, Data: make([]byte, 64<<10)}}})
	t.Logf("CreateKeyPackages 1000 x 64 KiB: %v in %v (%.200s); daemon peak RSS %s", status.Code(err), time.Since(start), status.Convert(err).Message(), d.peakRSS())
	wantCode(t, "1000 KeyPackages of 64 KiB", err, codes.InvalidArgument, "count")
	keys, err := c.ListKeys(ctx, &pb.ListKeysRequest{})
	if err != nil || len(keys.Keys) != 1 {
		t.Errorf("keys after the refused batch: %d, %v", len(keys.GetKeys()), err)
	}

	// A Welcome over the receive limit, through the CLI: a field error,
	// not gRPC's message-size complaint.
	big := filepath.Join(t.TempDir(), "welcome")
	os.WriteFile(big, make([]byte, 10<<20), 0o600)
	_, stderr, code := d.ctl("welcome", "open", "--in", big)
	t.Logf("mlskeyctl welcome open of 10 MiB: exit %d, %q", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "welcome:") || strings.Contains(stderr, "received message larger than max") {
		t.Errorf("oversize Welcome: exit %d, %q", code, stderr)
	}
}
