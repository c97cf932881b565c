package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

type statusJSON struct {
	Backend string      `json:"backend"`
	Device  string      `json:"device"`
	Version string      `json:"version"`
	Suites  []suiteJSON `json:"suites"`
	// The binding and what start-up quarantined; the ids are shown to
	// admins only.
	Installation  string   `json:"installation_id"`
	MissingKeys   uint32   `json:"missing_keys"`
	StrayKeys     uint32   `json:"stray_keys"`
	MissingKeyIDs []string `json:"missing_key_ids"`
	StrayKeyIDs   []string `json:"stray_key_ids"`
}

// suiteJSON is a cipher suite in status --json; a role's protection is null
// when the role is unavailable for the suite.
type suiteJSON struct {
	CipherSuite    uint32  `json:"cipher_suite"`
	Name           string  `json:"name"`
	Signature      *string `json:"signature"`
	Init           *string `json:"init"`
	LeafEncryption *string `json:"leaf_encryption"`
	// RefusedByPolicy: the daemon's policy forbids the suite.
	RefusedByPolicy bool `json:"refused_by_policy,omitempty"`
}

func newStatusJSON(info *mlskeyv1.GetInfoResponse) statusJSON {
	out := statusJSON{
		Backend: info.GetBackend(),
		Device:  info.GetDevice(),
		Version: info.GetVersion(),
		Suites:  []suiteJSON{},

		Installation:  info.GetInstallationId(),
		MissingKeys:   info.GetMissingKeys(),
		StrayKeys:     info.GetStrayKeys(),
		MissingKeyIDs: orEmpty(info.GetMissingKeyIds()),
		StrayKeyIDs:   orEmpty(info.GetStrayKeyIds()),
	}
	for _, s := range info.GetSuites() {
		name := s.GetName()
		if name == "" {
			name = suiteName(s.GetCipherSuite())
		}
		out.Suites = append(out.Suites, suiteJSON{
			CipherSuite:     s.GetCipherSuite(),
			Name:            name,
			Signature:       optProtection(s.GetSignature()),
			Init:            optProtection(s.GetInit()),
			LeafEncryption:  optProtection(s.GetLeafEncryption()),
			RefusedByPolicy: s.GetRefusedByPolicy(),
		})
	}
	return out
}

func (c *cli) status(args []string) error {
	fs := c.newFlagSet("status", "[flags]", `Show the daemon's backend, device and version, and per cipher suite the
protection each key role gets there: hardware (generated and used inside the
device), wrapped (used inside the device, stored outside it encrypted),
sealed (used in the daemon's memory, stored encrypted by the device), "-"
(unavailable), or "policy" (the daemon's policy forbids the suite).`, nil)
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		info, err := cl.GetInfo(ctx, &mlskeyv1.GetInfoRequest{})
		if err != nil {
			return err
		}
		return c.printStatus(info)
	})
}

func (c *cli) printStatus(info *mlskeyv1.GetInfoResponse) error {
	st := newStatusJSON(info)
	if c.g.json {
		return c.writeJSON(st)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "backend:\t%s\n", oneLine(st.Backend))
	fmt.Fprintf(tw, "device:\t%s\n", oneLine(st.Device))
	fmt.Fprintf(tw, "version:\t%s\n", oneLine(st.Version))
	fmt.Fprintf(tw, "installation:\t%s\n", orDash(oneLine(st.Installation)))
	fmt.Fprintf(tw, "missing keys:\t%s\n", quarantineLine(st.MissingKeys, st.MissingKeyIDs, "retire with 'mlskeyctl repair --retire-missing' once the device is known to be right"))
	fmt.Fprintf(tw, "stray device keys:\t%s\n", quarantineLine(st.StrayKeys, st.StrayKeyIDs, "destroy with 'mlskeyctl repair --destroy-strays' once checked"))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout)
	tw = tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUITE\tNAME\tSIGNATURE\tINIT\tLEAF ENCRYPTION")
	for _, s := range info.GetSuites() {
		name := s.GetName()
		if name == "" {
			name = suiteName(s.GetCipherSuite())
		}
		if s.GetRefusedByPolicy() {
			fmt.Fprintf(tw, "%d\t%s\tpolicy\tpolicy\tpolicy\n", s.GetCipherSuite(), orDash(oneLine(name)))
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", s.GetCipherSuite(), orDash(oneLine(name)),
			textProtection(s.GetSignature()), textProtection(s.GetInit()), textProtection(s.GetLeafEncryption()))
	}
	return tw.Flush()
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// quarantineLine shows a count, the ids when known and, when there are
// any, what to do.
func quarantineLine(n uint32, ids []string, todo string) string {
	if n == 0 {
		return "0"
	}
	out := fmt.Sprint(n)
	if len(ids) > 0 {
		out += " (" + oneLine(strings.Join(ids, " ")) + ")"
	}
	return out + "; " + todo
}
