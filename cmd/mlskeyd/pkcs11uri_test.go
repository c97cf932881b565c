package main

import (
	"io"
	"strings"
	"testing"
)

func TestPKCS11Selection(t *testing.T) {
	parse := func(env map[string]string, args ...string) *settings {
		t.Helper()
		cfg := newSettings()
		if err := cfg.parse(args, func(k string) string { return env[k] }, io.Discard); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	uri := "pkcs11:token=mls;serial=42;manufacturer=ACME?module-path=/opt/acme/p11.so&pin-source=file:/etc/mlskeyd/pin"

	pc, pin, err := pkcs11Selection(parse(nil, "--pkcs11-uri", uri))
	if err != nil {
		t.Fatal(err)
	}
	if pc.Module != "/opt/acme/p11.so" || pc.TokenLabel != "mls" || pc.TokenSerial != "42" || pc.TokenManufacturer != "ACME" || pin != "/etc/mlskeyd/pin" {
		t.Fatalf("%+v pin file %q", pc, pin)
	}
	// Shorthands may repeat the URI, or add what it leaves out.
	pc, pin, err = pkcs11Selection(parse(nil, "--pkcs11-uri", "pkcs11:serial=42", "--pkcs11-serial", "42",
		"--pkcs11-token", "mls", "--pkcs11-pin-file", "/p", "--pkcs11-module", "/m.so"))
	if err != nil || pc.TokenLabel != "mls" || pc.TokenSerial != "42" || pc.Module != "/m.so" || pin != "/p" {
		t.Fatalf("%+v %q %v", pc, pin, err)
	}
	// A shorthand that says otherwise is refused, wherever it comes from.
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"--pkcs11-token", "other"}, `--pkcs11-uri says token="mls" but --pkcs11-token (flag) says "other"`},
		{map[string]string{"MLSKEYD_PKCS11_SERIAL": "7"}, nil, `serial="42" but --pkcs11-serial (env) says "7"`},
		{nil, []string{"--pkcs11-module", "/usr/lib/softhsm/libsofthsm2.so"}, `module-path="/opt/acme/p11.so" but --pkcs11-module`},
		{nil, []string{"--pkcs11-pin-file", "/elsewhere"}, `pin-source="/etc/mlskeyd/pin" but --pkcs11-pin-file`},
	} {
		_, _, err := pkcs11Selection(parse(c.env, append([]string{"--pkcs11-uri", uri}, c.args...)...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: got %v, want %q", c.env, c.args, err, c.want)
		}
	}
	// Defaults (dev mode's token label) do not mix into a URI's choice.
	cfg := parse(nil, "--pkcs11-uri", "pkcs11:serial=42")
	cfg.byName["pkcs11-token"].value = "mlskeyd-dev"
	cfg.byName["pkcs11-pin-file"].value = "/state/pin"
	pc, pin, err = pkcs11Selection(cfg)
	if err != nil || pc.TokenLabel != "" || pin != "/state/pin" {
		t.Fatalf("defaults: %+v %q %v", pc, pin, err)
	}
	if _, _, err := pkcs11Selection(parse(nil, "--pkcs11-uri", "pkcs11:token=t?pin-value=123456")); err == nil ||
		!strings.HasPrefix(err.Error(), "--pkcs11-uri: PKCS#11 URI: attribute pin-value") || strings.Contains(err.Error(), "123456") {
		t.Fatalf("pin-value: %v", err)
	}
}
