package main

import (
	"encoding/json"
	"strings"
	"testing"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// status shows the device's state and last error, and why a role is not
// hardware, once per reason.
func TestStatusDeviceStateAndNotes(t *testing.T) {
	fake, sock := startFake(t)
	why := "the device cannot compute it (CKM_ECDH1_DERIVE not offered); the key is sealed under a device key"
	fake.info = &mlskeyv1.GetInfoResponse{
		Backend: "pkcs11", Device: "token", Version: "v",
		DeviceState: "unavailable", DeviceLastError: "C_Sign: pkcs11: 0x30: CKR_DEVICE_ERROR", DeviceStateSince: 1790000000, DeviceRecoveries: 3,
		Suites: []*mlskeyv1.SuiteSupport{
			{CipherSuite: 1, Init: mlskeyv1.Protection_PROTECTION_SEALED, InitNote: why, SignatureNote: "the device cannot compute it and cannot seal"},
			{CipherSuite: 2, Signature: mlskeyv1.Protection_PROTECTION_HARDWARE, Init: mlskeyv1.Protection_PROTECTION_SEALED, InitNote: why},
		},
	}
	out := mustRun(t, sock, "", "status")
	for _, want := range []string{
		"state:              unavailable since 2026-09-21T14:13:20Z (recovered 3 times)\n",
		"last error:         C_Sign: pkcs11: 0x30: CKR_DEVICE_ERROR\n",
		"signature (suites 1): the device cannot compute it and cannot seal\n",
		"init (suites 1,2): " + why + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(mustRun(t, sock, "", "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.DeviceState != "unavailable" || st.DeviceRecoveries != 3 || st.Suites[1].Notes["init"] != why || st.Suites[1].Notes["signature"] != "" {
		t.Errorf("status --json: %+v", st)
	}
}
