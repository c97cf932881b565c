package pkcs11

import (
	"context"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	good := map[string]URI{
		"pkcs11:token=mls%20keys;serial=0123abcd?module-path=/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so&pin-source=file:/etc/mlskeyd/pin": {
			Token: "mls keys", Serial: "0123abcd", ModulePath: "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", PINSource: "/etc/mlskeyd/pin"},
		"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1;token=a%3Bb": {
			Model: "SoftHSM v2", Manufacturer: "SoftHSM project", Serial: "1", Token: "a;b"},
		"pkcs11:token=t?pin-source=file:///run/secrets/pin":          {Token: "t", PINSource: "/run/secrets/pin"},
		"pkcs11:token=t?pin-source=/run/secrets/pin":                 {Token: "t", PINSource: "/run/secrets/pin"},
		"pkcs11:token=t?pin-source=file://localhost/run/secrets/pin": {Token: "t", PINSource: "/run/secrets/pin"},
		"pkcs11:serial=x?module-name=softhsm2":                       {Serial: "x", ModuleName: "softhsm2"},
	}
	for s, want := range good {
		u, err := ParseURI(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if *u != want {
			t.Errorf("%s: got %+v, want %+v", s, *u, want)
		}
	}
	bad := map[string]string{
		"token=t":                                         `does not start with "pkcs11:"`,
		"pkcs11:token=t?pin-value=1234":                   "pin-value puts the PIN in the URI",
		"pkcs11:token=t;object=key":                       "object names an object",
		"pkcs11:token=t;id=%01":                           "id names an object",
		"pkcs11:token=t;slot-id=3":                        "slot-id slot numbers change",
		"pkcs11:token=t;x-vendor=1":                       `unknown attribute "x-vendor"`,
		"pkcs11:token=t;token=u":                          "token appears twice",
		"pkcs11:token=t?module-path=/a.so&module-name=b":  "module-path and module-name",
		"pkcs11:token=t?module-path=lib.so":               "not an absolute path",
		"pkcs11:token=t?module-name=/usr/lib/x.so":        "is a path; use module-path",
		"pkcs11:module-path=/a.so":                        "module-path is a query attribute",
		"pkcs11:token=t?serial=1":                         "serial is a path attribute",
		"pkcs11:?module-path=/a.so":                       "names no token",
		"pkcs11:token=":                                   "token is empty",
		"pkcs11:token=%zz":                                "bad percent-encoding",
		"pkcs11:token":                                    "is not name=value",
		"pkcs11:token=t?pin-source=https://example/pin":   "only file: sources",
		"pkcs11:token=t?pin-source=file://otherhost/pin":  "names another host",
		"pkcs11:token=t?pin-source=file:pin":              "not an absolute file path",
		"pkcs11:token=t?pin-source=/p&pin-source=/q":      "pin-source appears twice",
		"pkcs11:token=t;manufacturer=a;manufacturer=b":    "manufacturer appears twice",
		"pkcs11:token=t;library-manufacturer=OpenSC":      "library-manufacturer is not supported",
		"pkcs11:token=t;serial=1?pin-value=s3cret&x=1":    "pin-value",
		"pkcs11:token=t?pin-source=/p&module-path=/m.so&": `"" is not name=value`,
	}
	for s, want := range bad {
		_, err := ParseURI(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", s, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "1234") || strings.Contains(err.Error(), "s3cret")) {
			t.Errorf("%s: the PIN is in the error: %v", s, err)
		}
	}
	// A PIN in something that is not even a PKCS#11 URI is not echoed.
	if _, err := ParseURI("pkcs:token=t?pin-value=1234"); err == nil || strings.Contains(err.Error(), "1234") {
		t.Errorf("error %v", err)
	}
}

func TestTokenURIRoundTrip(t *testing.T) {
	s := TokenURI("SoftHSM v2", "SoftHSM project", "0a1b", "keys;of=mls/1?&", "/usr/lib/softhsm/libsofthsm2.so")
	if want := "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=0a1b;token=keys%3Bof%3Dmls%2F1%3F%26?module-path=/usr/lib/softhsm/libsofthsm2.so"; s != want {
		t.Fatalf("got  %s\nwant %s", s, want)
	}
	u, err := ParseURI(s)
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "keys;of=mls/1?&" || u.Model != "SoftHSM v2" || u.ModulePath != "/usr/lib/softhsm/libsofthsm2.so" {
		t.Fatalf("%+v", *u)
	}
}

// The URI a backend reports selects its token again, among several, and
// manufacturer and model take part in the choice.
func TestURISelectsToken(t *testing.T) {
	requireSoftHSM(t)
	h, err := InitSoftHSM(t.TempDir(), "first")
	if err != nil {
		t.Fatal(err)
	}
	pin := RandomPIN()
	if err := h.InitToken(RandomPIN(), pin); err != nil {
		t.Fatal(err)
	}
	second := *h
	second.Label = "second"
	if err := second.InitToken(RandomPIN(), pin); err != nil {
		t.Fatal(err)
	}
	b := openBackend(t, second.Config(pin))
	uri := b.Info().URI
	if !strings.HasPrefix(uri, "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=") || !strings.Contains(uri, ";token=second?module-path=/") {
		t.Fatalf("URI %s", uri)
	}
	u, err := ParseURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Module: u.ModulePath, TokenSerial: u.Serial, TokenManufacturer: u.Manufacturer, TokenModel: u.Model, PIN: pin}
	again := openBackend(t, cfg)
	if again.Info().URI != uri {
		t.Fatalf("reopened by URI: %s, want %s", again.Info().URI, uri)
	}
	// Manufacturer alone matches both tokens; a wrong model matches none.
	_, err = Open(context.Background(), Config{Module: u.ModulePath, TokenManufacturer: u.Manufacturer, PIN: pin})
	if err == nil || !strings.Contains(err.Error(), "2 tokens with manufacturer \"SoftHSM project\"") {
		t.Fatalf("manufacturer only: %v", err)
	}
	_, err = Open(context.Background(), Config{Module: u.ModulePath, TokenLabel: "second", TokenModel: "Other", PIN: pin})
	if err == nil || !strings.Contains(err.Error(), `no initialised token with label "second" and model "Other"`) {
		t.Fatalf("wrong model: %v", err)
	}
}
