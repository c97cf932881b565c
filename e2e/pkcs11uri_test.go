package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// mlskeyctl status prints the token's RFC 7512 URI, and the daemon takes
// that URI (with a pin-source) to select the same token again.
func TestPKCS11URI(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	var st struct {
		Device    string `json:"device"`
		DeviceURI string `json:"device_uri"`
	}
	d.ctlJSON(t, &st, "status")
	if !strings.HasPrefix(st.DeviceURI, "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=") ||
		!strings.Contains(st.DeviceURI, ";token=mlskeyd-dev?module-path=/") {
		t.Fatalf("status device_uri %q", st.DeviceURI)
	}
	out, _, _ := d.ctl("status")
	if !regexp.MustCompile(`\nuri: +` + regexp.QuoteMeta(st.DeviceURI) + `\n`).MatchString(out) {
		t.Fatalf("status does not print the URI:\n%s", out)
	}
	d.stop()

	pinFile := filepath.Join(state, "pin")
	uri := st.DeviceURI + "&pin-source=file:" + pinFile
	d = startDaemon(t, state, "--pkcs11-uri", uri)
	var again struct {
		DeviceURI string `json:"device_uri"`
	}
	d.ctlJSON(t, &again, "status")
	if again.DeviceURI != st.DeviceURI {
		t.Fatalf("by URI: %q, want %q", again.DeviceURI, st.DeviceURI)
	}
	d.stop()

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--pkcs11-uri", "pkcs11:token=mlskeyd-dev?pin-value=12345678"}, "attribute pin-value puts the PIN in the URI"},
		{[]string{"--pkcs11-uri", "pkcs11:token=mlskeyd-dev;object=k"}, "attribute object names an object"},
		{[]string{"--pkcs11-uri", "pkcs11:token=mlskeyd-dev;flavour=x"}, `unknown attribute "flavour"`},
		{[]string{"--pkcs11-uri", "pkcs11:token=mlskeyd-dev", "--pkcs11-token", "other"}, `--pkcs11-uri says token="mlskeyd-dev" but --pkcs11-token (flag) says "other"`},
		{[]string{"--pkcs11-uri", "pkcs11:token=nosuch"}, `no initialised token with label "nosuch"`},
	} {
		out := startDaemonExpectFailure(t, state, c.args...)
		if !strings.Contains(out, c.want) || strings.Contains(out, "12345678") {
			t.Errorf("%v: output\n%s\nwant %q and no PIN", c.args, out, c.want)
		}
	}
}
