package pkcs11

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// URI is a PKCS#11 URI (RFC 7512) that names a token: the module that
// drives it, the token's attributes and where its PIN is. Only what
// selects a token is accepted; attributes that name objects or carry
// secrets are refused.
type URI struct {
	// Token attributes (CK_TOKEN_INFO), matched exactly; empty matches any.
	Token, Manufacturer, Serial, Model string
	// ModulePath is the module's file; ModuleName its name, looked up in
	// the system's PKCS#11 module directories (see ResolveModule).
	ModulePath, ModuleName string
	// PINSource is the file named by pin-source (file: URI or a path).
	PINSource string
}

// uriPath are the path attributes an mlskeyd token URI may carry, with the
// field each sets.
var uriPath = map[string]func(*URI) *string{
	"token":        func(u *URI) *string { return &u.Token },
	"manufacturer": func(u *URI) *string { return &u.Manufacturer },
	"serial":       func(u *URI) *string { return &u.Serial },
	"model":        func(u *URI) *string { return &u.Model },
}

var uriQuery = map[string]func(*URI) *string{
	"module-path": func(u *URI) *string { return &u.ModulePath },
	"module-name": func(u *URI) *string { return &u.ModuleName },
	"pin-source":  func(u *URI) *string { return &u.PINSource },
}

// Attributes RFC 7512 defines that mean something other than "this
// token": said so by name rather than as unknown.
var uriRefused = map[string]string{
	"object":               "names an object; mlskeyd creates and finds its own objects, give a token URI",
	"id":                   "names an object; mlskeyd creates and finds its own objects, give a token URI",
	"type":                 "names an object type; give a token URI",
	"slot-id":              "slot numbers change when devices are added or removed; select the token by token, serial, manufacturer and model",
	"slot-description":     "is not supported; select the token by token, serial, manufacturer and model",
	"slot-manufacturer":    "is not supported; select the token by token, serial, manufacturer and model",
	"library-manufacturer": "is not supported; name the module with module-path or module-name",
	"library-description":  "is not supported; name the module with module-path or module-name",
	"library-version":      "is not supported; name the module with module-path or module-name",
	"pin-value":            "puts the PIN in the URI, which ends up in argv, logs and shell history; use pin-source=file:/path (a file only the daemon's user can read)",
}

// ParseURI parses a PKCS#11 URI naming a token. It refuses unknown,
// repeated and secret-bearing attributes (pin-value), and both module-path
// and module-name.
func ParseURI(s string) (*URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("PKCS#11 URI %q does not start with \"pkcs11:\"", redactURI(s))
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	set := func(part, sep string, attrs map[string]func(*URI) *string) error {
		if part == "" {
			return nil
		}
		for _, kv := range strings.Split(part, sep) {
			name, raw, ok := strings.Cut(kv, "=")
			if !ok || name == "" {
				return fmt.Errorf("PKCS#11 URI: %q is not name=value", kv)
			}
			if why, bad := uriRefused[name]; bad {
				return fmt.Errorf("PKCS#11 URI: attribute %s %s", name, why)
			}
			field, known := attrs[name]
			if !known {
				if _, other := uriPath[name]; other {
					return fmt.Errorf("PKCS#11 URI: %s is a path attribute; put it before the '?'", name)
				}
				if _, other := uriQuery[name]; other {
					return fmt.Errorf("PKCS#11 URI: %s is a query attribute; put it after the '?'", name)
				}
				return fmt.Errorf("PKCS#11 URI: unknown attribute %q (mlskeyd takes token, manufacturer, serial, model; ?module-path, module-name, pin-source)", name)
			}
			if seen[name] {
				return fmt.Errorf("PKCS#11 URI: attribute %s appears twice", name)
			}
			seen[name] = true
			v, err := url.PathUnescape(raw)
			if err != nil {
				return fmt.Errorf("PKCS#11 URI: attribute %s: bad percent-encoding: %w", name, err)
			}
			if v == "" {
				return fmt.Errorf("PKCS#11 URI: attribute %s is empty", name)
			}
			*field(u) = v
		}
		return nil
	}
	if err := set(path, ";", uriPath); err != nil {
		return nil, err
	}
	if err := set(query, "&", uriQuery); err != nil {
		return nil, err
	}
	if u.ModulePath != "" && u.ModuleName != "" {
		return nil, errors.New("PKCS#11 URI: module-path and module-name both name the module; give one")
	}
	if u.ModulePath != "" && !filepath.IsAbs(u.ModulePath) {
		return nil, fmt.Errorf("PKCS#11 URI: module-path %q is not an absolute path", u.ModulePath)
	}
	if u.ModuleName != "" && strings.ContainsRune(u.ModuleName, '/') {
		return nil, fmt.Errorf("PKCS#11 URI: module-name %q is a path; use module-path", u.ModuleName)
	}
	if u.PINSource != "" {
		p, err := pinSourcePath(u.PINSource)
		if err != nil {
			return nil, err
		}
		u.PINSource = p
	}
	if u.Token == "" && u.Serial == "" && u.Manufacturer == "" && u.Model == "" {
		return nil, errors.New("PKCS#11 URI names no token: give at least token= or serial=")
	}
	return u, nil
}

// pinSourcePath accepts file:/path, file:///path and a plain absolute path
// (what p11-kit and OpenSSL's pkcs11 engines take).
func pinSourcePath(src string) (string, error) {
	p := src
	if rest, ok := strings.CutPrefix(src, "file:"); ok {
		p = rest
		if h, ok := strings.CutPrefix(rest, "//"); ok {
			// file://HOST/path: only the local host.
			host, path, _ := strings.Cut(h, "/")
			if host != "" && host != "localhost" {
				return "", fmt.Errorf("PKCS#11 URI: pin-source %q names another host", src)
			}
			p = "/" + path
		}
	} else if strings.Contains(src, ":") && !strings.HasPrefix(src, "/") {
		return "", fmt.Errorf("PKCS#11 URI: pin-source %q: only file: sources are supported", src)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("PKCS#11 URI: pin-source %q is not an absolute file path", src)
	}
	return filepath.Clean(p), nil
}

// redactURI keeps a URI with a pin-value out of error messages.
func redactURI(s string) string {
	if strings.Contains(s, "pin-value") {
		return "(URI with pin-value, not shown)"
	}
	return s
}

// moduleDirs are where Debian and p11-kit install PKCS#11 modules.
var moduleDirs = []string{
	"/usr/lib/x86_64-linux-gnu/pkcs11",
	"/usr/lib/aarch64-linux-gnu/pkcs11",
	"/usr/lib/pkcs11",
	"/usr/lib64/pkcs11",
	"/usr/lib/x86_64-linux-gnu/softhsm",
	"/usr/lib/aarch64-linux-gnu/softhsm",
	"/usr/lib/softhsm",
}

// ResolveModule returns the module's path: ModulePath, or ModuleName
// looked up as NAME.so or libNAME.so in the module directories ("" if the
// URI names no module).
func (u *URI) ResolveModule() (string, error) {
	if u.ModuleName == "" {
		return u.ModulePath, nil
	}
	for _, dir := range moduleDirs {
		for _, f := range []string{u.ModuleName + ".so", "lib" + u.ModuleName + ".so", u.ModuleName} {
			p := filepath.Join(dir, f)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("PKCS#11 URI: module-name %q: no %s.so or lib%s.so in %s; use module-path", u.ModuleName, u.ModuleName, u.ModuleName, strings.Join(moduleDirs, ", "))
}

// uriEscape percent-encodes everything but RFC 7512's unreserved
// characters and the few it allows unescaped in values; '/' only in the
// query (module paths).
func uriEscape(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:[]@!$'()*+,", c) >= 0 || query && c == '/' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// TokenURI is the RFC 7512 URI of a token, as p11tool prints it, with the
// module's path as a query attribute when given.
func TokenURI(model, manufacturer, serial, token, module string) string {
	var parts []string
	for _, a := range [][2]string{{"model", model}, {"manufacturer", manufacturer}, {"serial", serial}, {"token", token}} {
		if a[1] != "" {
			parts = append(parts, a[0]+"="+uriEscape(a[1], false))
		}
	}
	s := "pkcs11:" + strings.Join(parts, ";")
	if module != "" {
		s += "?module-path=" + uriEscape(module, true)
	}
	return s
}
