package e2e

import (
	"context"
	"strings"
	"testing"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// TestWrappedInitKeys: on SoftHSM 2.6.1 the daemon wraps suite 2's init
// and leaf keys by default and keeps X25519 ones hardware, GetInfo says
// which and why, a wrapped init key opens a Welcome after a restart, and
// --init-key-protection wrapped for every suite (X25519 included) stops
// the start with one line.
func TestWrappedInitKeys(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	c := d.client()
	info, err := c.GetInfo(context.Background(), &pb.GetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range info.Suites {
		switch s.CipherSuite {
		case 2:
			if s.Init != pb.Protection_PROTECTION_WRAPPED || s.LeafEncryption != pb.Protection_PROTECTION_WRAPPED || !strings.Contains(s.InitNote, "wraps") {
				t.Errorf("suite 2: init %s (%q), leaf %s; want wrapped", s.Init, s.InitNote, s.LeafEncryption)
			}
		case 1:
			if s.Init != pb.Protection_PROTECTION_HARDWARE || !strings.Contains(s.InitNote, "not wrapped") {
				t.Errorf("suite 1: init %s (%q); want hardware, and why not wrapped", s.Init, s.InitNote)
			}
		}
	}
	kp := createKPs(t, c, 2, 1).KeyPackages[0]
	k, err := c.GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.InitKeyId})
	if err != nil || k.Protection != pb.Protection_PROTECTION_WRAPPED {
		t.Fatalf("init key: %v %v", k, err)
	}
	d.stop()
	d = startDaemon(t, state)
	c = d.client()
	if _, err := c.OpenWelcome(context.Background(), &pb.OpenWelcomeRequest{Welcome: welcomeFor(t, kp.KeyPackage)}); err != nil {
		t.Fatalf("OpenWelcome with a wrapped init key after a restart: %v", err)
	}
	d.stop()
	out := startDaemonExpectFailure(t, t.TempDir(), "--init-key-protection", "wrapped")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "mlskeyd: init-key protection wrapped for x25519 is impossible") || !strings.Contains(last, "use hardware or sealed") {
		t.Errorf("start with wrapped X25519 keys: %q", last)
	}
}

// TestTPMRefusesWrapped: the TPM backend has no wrapped keys; asking for
// them stops the start with one line naming the alternatives, which work.
func TestTPMRefusesWrapped(t *testing.T) {
	out := startDaemonExpectFailure(t, t.TempDir(), "--backend", "tpm", "--init-key-protection", "2=wrapped")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "mlskeyd: init-key protection wrapped for ecdh-p256 is impossible: the tpm backend has no wrapped keys") || !strings.Contains(last, "use hardware or sealed") {
		t.Errorf("tpm with wrapped init keys: %q", last)
	}
	d := startDaemon(t, t.TempDir(), "--backend", "tpm", "--init-key-protection", "2=hardware,1=sealed")
	kp := createKPs(t, d.client(), 2, 1).KeyPackages[0]
	k, err := d.client().GetKey(context.Background(), &pb.GetKeyRequest{Id: kp.InitKeyId})
	if err != nil || k.Protection != pb.Protection_PROTECTION_HARDWARE {
		t.Fatalf("tpm init key with hardware: %v %v", k, err)
	}
	d.stop()
}

// TestRetiredWrappedKeyNotRevived: TestRetiredKeyNotRevived for a wrapped
// suite 2 init key on SoftHSM. With --seal-epoch retire, opening the
// Welcome starts a new epoch, re-wraps the KeyPackage's leaf key and the
// other KeyPackage's keys into it and destroys the old wrapping key, so
// the old catalog's blob no longer unwraps.
func TestRetiredWrappedKeyNotRevived(t *testing.T) {
	state := t.TempDir()
	args := []string{"--seal-epoch", "retire"}
	d := startDaemon(t, state, args...)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "revival@example.org", "--count", "2")
	var init keyJSON
	d.ctlJSON(t, &init, "key", "show", kps[0].InitKeyID)
	if init.Protection != "wrapped" {
		t.Fatalf("suite 2 init key on SoftHSM is %s, want wrapped", init.Protection)
	}
	file := welcomeFileFor(t, kps[0].KeyPackage, nil)
	d.stop()
	restore := backUpCatalog(t, state)
	d = startDaemon(t, state, args...)
	if out, errOut, code := d.ctl("welcome", "open", "--in", file); code != 0 {
		t.Fatalf("first open: exit %d %s %s", code, out, errOut)
	}
	// The other KeyPackage moved to the new epoch and still works.
	var leaf keyJSON
	d.ctlJSON(t, &leaf, "key", "show", kps[1].LeafEncryptionKeyID)
	if leaf.State != "active" || leaf.Protection != "wrapped" {
		t.Fatalf("other KeyPackage's leaf key: %+v", leaf)
	}
	d.stop()
	restore()
	d = startDaemon(t, state, args...)
	out, errOut, code := d.ctl("welcome", "open", "--in", file)
	if code == 0 {
		t.Fatalf("the consumed wrapped init key opened the Welcome again from the old catalog: %s", out)
	}
	if !strings.Contains(errOut, "failed precondition") || !strings.Contains(errOut, "epoch key is not on the device") {
		t.Fatalf("second open fails without saying why: %s", errOut)
	}
	t.Logf("second open: %s", strings.TrimSpace(errOut))
}
