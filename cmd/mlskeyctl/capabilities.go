package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/mlskeyd/mlskeyd/mls"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// capabilityFlags are keypackage create's flags describing the MLS engine
// that will use the KeyPackages: what it supports beyond what the daemon
// derives, extensions to carry, and whether to add GREASE.
type capabilityFlags struct {
	credentials, extensions, proposals, suites codeListFlag
	leafExts, kpExts                           extensionFlag
	noGrease                                   bool
}

func (f *capabilityFlags) register(fs *flag.FlagSet) {
	f.credentials.kind, f.extensions.kind, f.proposals.kind, f.suites.kind = "credential", "extension", "proposal", "suite"
	fs.Var(&f.credentials, "credential-types", "credential types the engine supports, a comma `LIST` of basic, x509\nor numbers (a group requiring X.509 support needs x509 here)")
	fs.Var(&f.extensions, "extension-types", "non-default extension types the engine supports, a comma `LIST`")
	fs.Var(&f.proposals, "proposal-types", "non-default proposal types the engine supports, a comma `LIST`")
	fs.Var(&f.suites, "cipher-suites", "further cipher suites the engine supports, a comma `LIST` of numbers or names")
	fs.Var(&f.leafExts, "leaf-extension", "add a LeafNode extension `TYPE:HEX` (repeatable)")
	fs.Var(&f.kpExts, "keypackage-extension", "add a KeyPackage extension `TYPE:HEX` (repeatable)")
	fs.BoolVar(&f.noGrease, "no-grease", false, "do not add GREASE values (RFC 9420 §13.5) to the capabilities")
}

func (f *capabilityFlags) apply(req *mlskeyv1.CreateKeyPackagesRequest) {
	req.ExtraCredentials = f.credentials.v
	req.ExtraExtensions = f.extensions.v
	req.ExtraProposals = f.proposals.v
	req.ExtraCipherSuites = f.suites.v
	req.LeafExtensions = f.leafExts.v
	req.KeyPackageExtensions = f.kpExts.v
	req.NoGrease = f.noGrease
}

// parseCodePoint reads a 16-bit number, decimal or 0x-hex.
func parseCodePoint(s string) (uint32, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a 16-bit number", s)
	}
	return uint32(v), nil
}

// codeListFlag is a comma list of code points of one registry.
type codeListFlag struct {
	kind string
	v    []uint32
}

func (l *codeListFlag) String() string {
	if l == nil {
		return ""
	}
	var s []string
	for _, v := range l.v {
		s = append(s, fmt.Sprint(v))
	}
	return strings.Join(s, ",")
}

func (l *codeListFlag) Set(list string) error {
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		var v uint32
		var err error
		switch {
		case item == "":
			return fmt.Errorf("empty entry in %q", list)
		case l.kind == "credential" && strings.EqualFold(item, "basic"):
			v = uint32(mls.CredentialTypeBasic)
		case l.kind == "credential" && strings.EqualFold(item, "x509"):
			v = uint32(mls.CredentialTypeX509)
		case l.kind == "suite":
			if id, perr := mls.ParseSuite(item); perr == nil {
				v = uint32(id)
				break
			}
			// Engines may support suites the daemon does not know.
			v, err = parseCodePoint(item)
		default:
			v, err = parseCodePoint(item)
		}
		if err != nil {
			if l.kind == "credential" {
				return fmt.Errorf("%v (or basic, x509)", err)
			}
			return err
		}
		l.v = append(l.v, v)
	}
	return nil
}

// extensionFlag collects TYPE:HEX extensions.
type extensionFlag struct{ v []*mlskeyv1.Extension }

func (e *extensionFlag) String() string { return "" }

func (e *extensionFlag) Set(s string) error {
	t, h, ok := strings.Cut(s, ":")
	if !ok {
		return fmt.Errorf("%q is not TYPE:HEX", s)
	}
	typ, err := parseCodePoint(t)
	if err != nil {
		return err
	}
	data, err := hex.DecodeString(h)
	if err != nil {
		return fmt.Errorf("%q: the data is not hex", s)
	}
	e.v = append(e.v, &mlskeyv1.Extension{Type: typ, Data: data})
	return nil
}
