package main

import (
	"fmt"

	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// pkcs11Selection is the module, token and PIN file, from --pkcs11-uri
// and the shorthand settings (--pkcs11-module, --pkcs11-token,
// --pkcs11-serial, --pkcs11-pin-file). With a URI, the URI names the
// token: a shorthand set explicitly (flag, environment or config file) may
// add to it or repeat it, but one that says otherwise is refused, and
// defaults (dev mode's token) do not mix in.
func pkcs11Selection(cfg *settings) (pkcs11.Config, string, error) {
	pc := pkcs11.Config{Module: cfg.str("pkcs11-module"), TokenLabel: cfg.str("pkcs11-token"), TokenSerial: cfg.str("pkcs11-serial")}
	pinFile := cfg.str("pkcs11-pin-file")
	raw := cfg.str("pkcs11-uri")
	if raw == "" {
		return pc, pinFile, nil
	}
	u, err := pkcs11.ParseURI(raw)
	if err != nil {
		return pc, "", fmt.Errorf("--pkcs11-uri: %w", err)
	}
	module, err := u.ResolveModule()
	if err != nil {
		return pc, "", fmt.Errorf("--pkcs11-uri: %w", err)
	}
	moduleAttr := "module-path"
	if u.ModuleName != "" {
		moduleAttr = "module-name"
	}
	merge := func(setting, attr, fromURI string) (string, error) {
		st := cfg.byName[setting]
		explicit := ""
		if st.from != "default" {
			explicit = st.value
		}
		switch {
		case fromURI == "":
			return explicit, nil
		case explicit != "" && explicit != fromURI:
			return "", fmt.Errorf("--pkcs11-uri says %s=%q but --%s (%s) says %q: give one of them", attr, fromURI, setting, st.from, explicit)
		}
		return fromURI, nil
	}
	if pc.Module, err = merge("pkcs11-module", moduleAttr, module); err != nil {
		return pc, "", err
	}
	if pc.TokenLabel, err = merge("pkcs11-token", "token", u.Token); err != nil {
		return pc, "", err
	}
	if pc.TokenSerial, err = merge("pkcs11-serial", "serial", u.Serial); err != nil {
		return pc, "", err
	}
	if pinFile, err = merge("pkcs11-pin-file", "pin-source", u.PINSource); err != nil {
		return pc, "", err
	}
	pc.TokenManufacturer, pc.TokenModel = u.Manufacturer, u.Model
	// In dev mode the token is the one in STATE: its module and PIN file
	// stay the defaults unless the URI or a setting names others.
	if pc.Module == "" && cfg.byName["pkcs11-module"].from == "default" {
		pc.Module = cfg.str("pkcs11-module")
	}
	if pinFile == "" && cfg.byName["pkcs11-pin-file"].from == "default" {
		pinFile = cfg.str("pkcs11-pin-file")
	}
	return pc, pinFile, nil
}
