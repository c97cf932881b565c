package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

type statusJSON struct {
	Backend string      `json:"backend"`
	Device  string      `json:"device"`
	URI     string      `json:"device_uri,omitempty"`
	Version string      `json:"version"`
	Suites  []suiteJSON `json:"suites"`
	// The binding and what start-up quarantined; the ids are shown to
	// admins only.
	Installation  string   `json:"installation_id"`
	MissingKeys   uint32   `json:"missing_keys"`
	StrayKeys     uint32   `json:"stray_keys"`
	MissingKeyIDs []string `json:"missing_key_ids"`
	StrayKeyIDs   []string `json:"stray_key_ids"`
	// The device's condition: ready, unavailable (the daemon reconnects)
	// or failed; its last error and when the state last changed.
	DeviceState      string `json:"device_state,omitempty"`
	DeviceLastError  string `json:"device_last_error,omitempty"`
	DeviceStateSince string `json:"device_state_since,omitempty"`
	DeviceRecoveries int64  `json:"device_recoveries,omitempty"`
	// While device_state is "starting": what the daemon is doing.
	StartupPhase string `json:"startup_phase,omitempty"`
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
	// Why a role is below hardware or unavailable (omitted for hardware).
	Notes map[string]string `json:"notes,omitempty"`
}

func newStatusJSON(info *mlskeyv1.GetInfoResponse) statusJSON {
	out := statusJSON{
		Backend:          info.GetBackend(),
		Device:           info.GetDevice(),
		URI:              info.GetDeviceUri(),
		Version:          info.GetVersion(),
		Suites:           []suiteJSON{},
		Installation:     info.GetInstallationId(),
		MissingKeys:      info.GetMissingKeys(),
		StrayKeys:        info.GetStrayKeys(),
		MissingKeyIDs:    orEmpty(info.GetMissingKeyIds()),
		StrayKeyIDs:      orEmpty(info.GetStrayKeyIds()),
		DeviceState:      info.GetDeviceState(),
		DeviceLastError:  info.GetDeviceLastError(),
		DeviceRecoveries: info.GetDeviceRecoveries(),
		StartupPhase:     info.GetStartupPhase(),
	}
	if t := info.GetDeviceStateSince(); t != 0 {
		out.DeviceStateSince = time.Unix(t, 0).UTC().Format(time.RFC3339)
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
			Notes:           suiteNotes(s),
		})
	}
	return out
}

func suiteNotes(s *mlskeyv1.SuiteSupport) map[string]string {
	m := map[string]string{}
	for role, n := range map[string]string{"signature": s.GetSignatureNote(), "init": s.GetInitNote(), "leaf_encryption": s.GetLeafEncryptionNote()} {
		if n != "" {
			m[role] = n
		}
	}
	if len(m) == 0 {
		return nil
	}
	return m
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
	if st.URI != "" {
		fmt.Fprintf(tw, "uri:\t%s\n", oneLine(st.URI))
	}
	fmt.Fprintf(tw, "version:\t%s\n", oneLine(st.Version))
	if st.DeviceState != "" {
		state := st.DeviceState
		if st.DeviceStateSince != "" && st.DeviceState != "ready" {
			state += " since " + st.DeviceStateSince
		}
		if st.StartupPhase != "" {
			state += " (" + st.StartupPhase + ")"
		}
		if st.DeviceRecoveries > 0 {
			state += fmt.Sprintf(" (recovered %d times)", st.DeviceRecoveries)
		}
		fmt.Fprintf(tw, "state:\t%s\n", oneLine(state))
	}
	if st.DeviceLastError != "" {
		fmt.Fprintf(tw, "last error:\t%s\n", oneLine(st.DeviceLastError))
	}
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
	if err := tw.Flush(); err != nil {
		return err
	}
	// The reasons, one line per role and reason with the suites it
	// applies to, so that a degraded or missing role is explained without
	// widening the table.
	type noteKey struct{ role, note string }
	var order []noteKey
	suitesOf := map[noteKey][]string{}
	for _, su := range st.Suites {
		for _, role := range []string{"signature", "init", "leaf_encryption"} {
			n := su.Notes[role]
			if n == "" {
				continue
			}
			k := noteKey{role, oneLine(n)}
			if suitesOf[k] == nil {
				order = append(order, k)
			}
			suitesOf[k] = append(suitesOf[k], fmt.Sprint(su.CipherSuite))
		}
	}
	if len(order) > 0 {
		fmt.Fprintln(c.stdout)
		for _, k := range order {
			fmt.Fprintf(c.stdout, "%s (suites %s): %s\n", strings.ReplaceAll(k.role, "_", " "), strings.Join(suitesOf[k], ","), k.note)
		}
	}
	return nil
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
