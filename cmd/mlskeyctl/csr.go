package main

import (
	"context"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// parseSubject reads a distinguished name written as RFC 4514 attributes
// separated by commas: CN, O, OU and C. Commas inside values need "\,".
func parseSubject(s string, req *mlskeyv1.CreateCSRRequest) error {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case s[i] == ',':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || v == "" {
			return fmt.Errorf("%q is not TYPE=VALUE", p)
		}
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "CN":
			if req.CommonName != "" {
				return fmt.Errorf("CN given twice")
			}
			req.CommonName = v
		case "O":
			req.Organization = append(req.Organization, v)
		case "OU":
			req.OrganizationalUnit = append(req.OrganizationalUnit, v)
		case "C":
			req.Country = append(req.Country, v)
		default:
			return fmt.Errorf("attribute %q is not one of CN, O, OU, C", k)
		}
	}
	return nil
}

// addSAN files a subject alternative name by its prefix (DNS:, email:,
// URI:) or, without one, by its look.
func addSAN(s string, req *mlskeyv1.CreateCSRRequest) error {
	kind, v, ok := strings.Cut(s, ":")
	switch k := strings.ToLower(kind); {
	case ok && k == "dns":
		req.DnsNames = append(req.DnsNames, v)
	case ok && k == "email":
		req.EmailAddresses = append(req.EmailAddresses, v)
	case ok && k == "uri":
		req.Uris = append(req.Uris, v)
	case strings.Contains(s, "://"):
		req.Uris = append(req.Uris, s)
	case strings.Contains(s, "@") && !ok:
		req.EmailAddresses = append(req.EmailAddresses, s)
	case !ok:
		req.DnsNames = append(req.DnsNames, s)
	default:
		return fmt.Errorf("%q: use DNS:NAME, email:ADDRESS or URI:URI", s)
	}
	return nil
}

func (c *cli) keyCSR(args []string) error {
	var subject, out string
	var sans listFlag
	fs := c.newFlagSet("key csr", "ID --subject DN [--san NAME]... [flags]", `Have signature key ID sign a PKCS#10 certification request for its own
public key, for a CA to issue the X.509 credential that 'keypackage create
--x509-chain' then uses. The daemon builds the whole request; only the
names come from here. Prints the request as PEM (or writes it to --out).`, func(fs *flag.FlagSet) {
		fs.StringVar(&subject, "subject", "", "the subject `DN`, e.g. \"CN=alice,O=Example,C=DE\" (CN, O, OU, C)")
		fs.Var(&sans, "san", "a subject alternative `NAME`: DNS:host, email:addr or URI:uri (repeatable)")
		fs.StringVar(&out, "out", "", "write the PEM to `FILE` instead of stdout")
	})
	id, err := c.parseID(fs, args)
	if err != nil {
		return err
	}
	req := &mlskeyv1.CreateCSRRequest{KeyId: id}
	if subject != "" {
		if err := parseSubject(subject, req); err != nil {
			return usageErrorf("key csr: --subject: %v", err)
		}
	}
	for _, s := range sans {
		if err := addSAN(s, req); err != nil {
			return usageErrorf("key csr: --san %v", err)
		}
	}
	if subject == "" && len(sans) == 0 {
		return usageErrorf("key csr: --subject or --san is required")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		r, err := cl.KeyServiceClient.CreateCSR(ctx, req)
		if err != nil {
			return err
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: r.GetCsr()})
		if out != "" {
			if err := os.WriteFile(out, p, 0o644); err != nil {
				return fmt.Errorf("key csr: %w", err)
			}
			return nil
		}
		if c.g.json {
			return c.writeJSON(map[string]string{"key_id": id, "csr": string(p)})
		}
		_, err = c.stdout.Write(p)
		return err
	})
}
