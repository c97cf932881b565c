package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

type tsCaps struct {
	CipherSuites []any `json:"cipher_suites"`
	Extensions   []any `json:"extensions"`
	Proposals    []any `json:"proposals"`
	Credentials  []any `json:"credentials"`
}

// verifyCaps has ts-mls decode and verify a KeyPackage and returns its
// capabilities and extension types, each entry as text.
func verifyCaps(t *testing.T, kp string) (caps map[string][]string, leafExt, kpExt []string) {
	t.Helper()
	var v struct {
		Results []struct {
			OK           bool   `json:"ok"`
			Error        string `json:"error"`
			Capabilities tsCaps `json:"capabilities"`
			LeafExt      []any  `json:"leaf_node_extensions"`
			KPExt        []any  `json:"key_package_extensions"`
		} `json:"results"`
	}
	tsmls(t, "verify", map[string][]string{"key_packages": {kp}}, &v)
	if len(v.Results) != 1 || !v.Results[0].OK {
		t.Fatalf("ts-mls rejects the KeyPackage: %+v", v)
	}
	text := func(l []any) []string {
		out := []string{}
		for _, x := range l {
			out = append(out, fmt.Sprint(x))
		}
		return out
	}
	r := v.Results[0]
	return map[string][]string{
		"cipher_suites": text(r.Capabilities.CipherSuites), "extensions": text(r.Capabilities.Extensions),
		"proposals": text(r.Capabilities.Proposals), "credentials": text(r.Capabilities.Credentials),
	}, text(r.LeafExt), text(r.KPExt)
}

// greaseIn counts GREASE values (RFC 9420 §13.5: 0x?A?A with equal
// nibbles) among entries written as numbers.
func greaseIn(list []string) int {
	n := 0
	for _, s := range list {
		v, err := strconv.ParseUint(s, 10, 16)
		if err == nil && v&0x0F0F == 0x0A0A && v>>12 == (v>>4)&0xF && v>>12 <= 0xE {
			n++
		}
	}
	return n
}

// TestKeyPackageCapabilityFlags: keypackage create's flags describe the
// engine; the daemon adds GREASE unless --no-grease; ts-mls decodes and
// verifies the result either way.
func TestKeyPackageCapabilityFlags(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "bob",
		"--credential-types", "basic,x509,0xf001", "--extension-types", "0xff01,0xff03", "--proposal-types", "0xff10",
		"--cipher-suites", "1,MLS_256_DHKEMP384_AES256GCM_SHA384_P384,77",
		"--leaf-extension", "0xff01:0102", "--keypackage-extension", "0xff02:aa")
	caps, leafExt, kpExt := verifyCaps(t, kps[0].KeyPackage)
	for _, c := range []struct {
		list string
		want []string
	}{
		{"credentials", []string{"basic", "x509", strconv.Itoa(0xf001)}},
		{"extensions", []string{strconv.Itoa(0xff01), strconv.Itoa(0xff02), strconv.Itoa(0xff03)}},
		{"proposals", []string{strconv.Itoa(0xff10)}},
		{"cipher_suites", []string{"2", "1", "7", "77"}},
	} {
		for _, w := range c.want {
			if !slices.Contains(caps[c.list], w) {
				t.Errorf("capabilities.%s = %v, want %s in it", c.list, caps[c.list], w)
			}
		}
	}
	if !slices.Equal(leafExt, []string{strconv.Itoa(0xff01)}) || !slices.Equal(kpExt, []string{strconv.Itoa(0xff02)}) {
		t.Errorf("extensions: leaf %v, KeyPackage %v", leafExt, kpExt)
	}
	for _, l := range []string{"credentials", "extensions", "proposals"} {
		if greaseIn(caps[l]) != 1 {
			t.Errorf("capabilities.%s = %v: want one GREASE value by default", l, caps[l])
		}
	}

	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "bob", "--no-grease")
	caps, _, _ = verifyCaps(t, kps[0].KeyPackage)
	if !slices.Equal(caps["credentials"], []string{"basic"}) || len(caps["extensions"]) != 0 || len(caps["proposals"]) != 0 {
		t.Errorf("--no-grease: capabilities %v", caps)
	}

	for _, bad := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--credential-types", "basic,x500"}, 2, "or basic, x509"},
		{[]string{"--extension-types", "0x10000"}, 2, "16-bit"},
		{[]string{"--leaf-extension", "0xff01"}, 2, "TYPE:HEX"},
		{[]string{"--leaf-extension", "0xff01:zz"}, 2, "not hex"},
		{[]string{"--extension-types", "3"}, 1, "default extension type 3"},
		{[]string{"--proposal-types", "2"}, 1, "default proposal type 2"},
	} {
		_, errOut, code := d.ctl(append([]string{"keypackage", "create", "--suite", "1", "--identity", "a"}, bad.args...)...)
		if code != bad.code || !strings.Contains(errOut, bad.want) {
			t.Errorf("%v: exit %d %q, want exit %d with %q", bad.args, code, errOut, bad.code, bad.want)
		}
	}
}

// TestKeyPackageDefaultsProfile: the config file's capabilities profile
// applies to every caller's KeyPackages, and can turn GREASE off.
func TestKeyPackageDefaultsProfile(t *testing.T) {
	cfg := writeConfig(t, map[string]any{"policy": map[string]any{"keypackage_defaults": map[string]any{
		"credentials": []string{"x509"}, "proposals": []string{"0xff10"}, "grease": false,
	}}})
	d := startDaemon(t, t.TempDir(), "--config", cfg)
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "1", "--identity", "bob")
	caps, _, _ := verifyCaps(t, kps[0].KeyPackage)
	if !slices.Equal(caps["credentials"], []string{"basic", "x509"}) || !slices.Equal(caps["proposals"], []string{strconv.Itoa(0xff10)}) {
		t.Fatalf("capabilities with the profile: %v", caps)
	}
	bad := writeConfig(t, map[string]any{"policy": map[string]any{"keypackage_defaults": map[string]any{"extensions": []int{2}}}})
	if out := startDaemonExpectFailure(t, t.TempDir(), "--config", bad); !strings.Contains(out, "keypackage_defaults.extensions") {
		t.Fatalf("a default extension type in the profile: %s", out)
	}
}
