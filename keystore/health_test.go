package keystore

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// brokenSealer is a fake device whose sealing failed its probe.
type brokenSealer struct {
	*fakeBackend
	why error
}

func (b brokenSealer) SealError() error { return b.why }

// A suite whose keys cannot be made is unavailable, never "sealed": the
// issue was GetInfo promising sealed keys on a token whose AES-GCM the
// forwarder did not carry.
func TestUnprobedSealerIsNotOffered(t *testing.T) {
	be := brokenSealer{newFake(ECDSAP256), errors.New("gcm: CKM_AES_GCM not offered")}
	s, _ := openStore(t, be, Options{})
	if p, err := s.Protection(ECDSAP256); err != nil || p != ProtectionHardware {
		t.Fatalf("P-256: %v %v", p, err)
	}
	for _, alg := range []Algorithm{Ed25519, X25519, ECDHP256} {
		if p, err := s.Protection(alg); !errors.Is(err, ErrUnsupportedAlgorithm) {
			t.Fatalf("%s: %q, %v; want unavailable", alg, p, err)
		}
		p, why := s.Availability(RoleInit, alg)
		if p != "" || !strings.Contains(why, "CKM_AES_GCM not offered") {
			t.Fatalf("%s availability: %q %q", alg, p, why)
		}
	}
	_, err := s.Create(context.Background(), KeySpec{Role: RoleInit, Algorithm: X25519})
	if !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Fatalf("create X25519 without sealing: %v", err)
	}
	// A working sealer keeps offering sealed keys, with the reason.
	s2, _ := openStore(t, newFake(ECDSAP256), Options{})
	if p, why := s2.Availability(RoleInit, X25519); p != ProtectionSealed || why == "" {
		t.Fatalf("sealed availability: %q %q", p, why)
	}
}

// A batch whose keys all fail reports the failure once, on one line.
func TestBatchErrorIsOneLine(t *testing.T) {
	be := newFake()
	s, _ := openStore(t, be, Options{})
	be.failGen = &DeviceError{Op: "pkcs11 generate", Err: errors.New("C_GenerateKeyPair: CKR_DEVICE_ERROR")}
	specs := []KeySpec{{Role: RoleInit, Algorithm: ECDHP256}, {Role: RoleLeafEncryption, Algorithm: ECDHP256}, {Role: RoleSignature, Algorithm: ECDSAP256}, {Role: RoleInit, Algorithm: ECDHP256}}
	_, err := s.NewBatch().Generate(context.Background(), specs)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || strings.Count(msg, "CKR_DEVICE_ERROR") != 1 || strings.Count(msg, "device ") != 1 {
		t.Fatalf("batch error not one line with one cause: %q", msg)
	}
	t.Log(msg)
}

func TestHealthTracker(t *testing.T) {
	var h HealthTracker
	if !h.Health().Ready() {
		t.Fatal("zero tracker not ready")
	}
	ch := h.HealthChanged()
	if !h.Down(errors.New("C_Sign: CKR_DEVICE_ERROR\nsecond line"), false) {
		t.Fatal("first Down not a change")
	}
	<-ch
	if hs := h.Health(); hs.State != DeviceUnavailable || strings.Contains(hs.LastError, "\n") {
		t.Fatalf("after Down: %+v", hs)
	}
	ch = h.HealthChanged()
	if !h.Up() {
		t.Fatal("Up not a change")
	}
	<-ch
	if hs := h.Health(); !hs.Ready() || hs.Recoveries != 1 {
		t.Fatalf("after Up: %+v", hs)
	}
	h.Down(errors.New("pin"), true)
	if h.Up(); h.Health().State != DeviceReady {
		t.Fatal("Up after failed")
	}
}
