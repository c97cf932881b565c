package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// writeJSON prints v as indented JSON.
func (c *cli) writeJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// roleName is the --role spelling of a key role.
func roleName(r mlskeyv1.KeyRole) string {
	switch r {
	case mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE:
		return "signature"
	case mlskeyv1.KeyRole_KEY_ROLE_INIT:
		return "init"
	case mlskeyv1.KeyRole_KEY_ROLE_LEAF_ENCRYPTION:
		return "leaf-encryption"
	case mlskeyv1.KeyRole_KEY_ROLE_UNSPECIFIED:
		return "unspecified"
	}
	return fmt.Sprintf("role-%d", int32(r))
}

// stateName is the --state spelling of a key state.
func stateName(s mlskeyv1.KeyState) string {
	switch s {
	case mlskeyv1.KeyState_KEY_STATE_ACTIVE:
		return "active"
	case mlskeyv1.KeyState_KEY_STATE_CONSUMED:
		return "consumed"
	case mlskeyv1.KeyState_KEY_STATE_DESTROYED:
		return "destroyed"
	case mlskeyv1.KeyState_KEY_STATE_MISSING:
		return "missing"
	case mlskeyv1.KeyState_KEY_STATE_UNSPECIFIED:
		return "unspecified"
	}
	return fmt.Sprintf("state-%d", int32(s))
}

// protectionName names a protection level; "" for PROTECTION_UNSPECIFIED
// (in GetInfo: the role is unavailable).
func protectionName(p mlskeyv1.Protection) string {
	switch p {
	case mlskeyv1.Protection_PROTECTION_HARDWARE:
		return "hardware"
	case mlskeyv1.Protection_PROTECTION_WRAPPED:
		return "wrapped"
	case mlskeyv1.Protection_PROTECTION_SEALED:
		return "sealed"
	case mlskeyv1.Protection_PROTECTION_UNSPECIFIED:
		return ""
	}
	return fmt.Sprintf("protection-%d", int32(p))
}

// optProtection is protectionName for JSON: null when unspecified.
func optProtection(p mlskeyv1.Protection) *string {
	if n := protectionName(p); n != "" {
		return &n
	}
	return nil
}

// textProtection is protectionName for text: "-" when unspecified.
func textProtection(p mlskeyv1.Protection) string {
	if n := protectionName(p); n != "" {
		return n
	}
	return "-"
}

// formatTime formats a timestamp in RFC 3339, UTC; "" when absent.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// suiteText is "1 (MLS_128_...)", or the number alone for unknown suites.
func suiteText(id uint32, name string) string {
	if name == "" {
		name = suiteName(id)
	}
	if name == "" {
		return fmt.Sprint(id)
	}
	return fmt.Sprintf("%d (%s)", id, name)
}

// keyJSON is a key in --json output.
type keyJSON struct {
	ID         string `json:"id"`
	Suite      uint32 `json:"suite"`
	Role       string `json:"role"`
	State      string `json:"state"`
	PublicKey  string `json:"public_key"`
	Protection string `json:"protection"`
	// For init and leaf encryption keys.
	KeyPackageRef  string `json:"key_package_ref,omitempty"`
	SignatureKeyID string `json:"signature_key_id,omitempty"`
	// For init keys.
	LastResort *bool  `json:"last_resort,omitempty"`
	Owner      string `json:"owner,omitempty"`
	CreatedAt  string `json:"created_at,omitempty"`
	RetiredAt  string `json:"retired_at,omitempty"`
}

func newKeyJSON(k *mlskeyv1.Key) keyJSON {
	j := keyJSON{
		ID:             k.GetId(),
		Suite:          k.GetCipherSuite(),
		Role:           roleName(k.GetRole()),
		State:          stateName(k.GetState()),
		PublicKey:      hex.EncodeToString(k.GetPublicKey()),
		Protection:     protectionName(k.GetProtection()),
		KeyPackageRef:  hex.EncodeToString(k.GetKeyPackageRef()),
		SignatureKeyID: k.GetSignatureKeyId(),
		Owner:          k.GetOwner(),
		CreatedAt:      formatTime(k.GetCreatedAt()),
		RetiredAt:      formatTime(k.GetRetiredAt()),
	}
	if k.GetRole() == mlskeyv1.KeyRole_KEY_ROLE_INIT {
		lr := k.GetLastResort()
		j.LastResort = &lr
	}
	return j
}

// printKey prints one key as "name: value" lines.
func (c *cli) printKey(k *mlskeyv1.Key) error {
	if c.g.json {
		return c.writeJSON(newKeyJSON(k))
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	line := func(name, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", name, value)
		}
	}
	line("id", k.GetId())
	line("suite", suiteText(k.GetCipherSuite(), ""))
	line("role", roleName(k.GetRole()))
	line("state", stateName(k.GetState()))
	line("protection", protectionName(k.GetProtection()))
	line("public key", hex.EncodeToString(k.GetPublicKey()))
	line("key package ref", hex.EncodeToString(k.GetKeyPackageRef()))
	line("signature key", k.GetSignatureKeyId())
	if k.GetRole() == mlskeyv1.KeyRole_KEY_ROLE_INIT {
		line("last resort", fmt.Sprint(k.GetLastResort()))
	}
	line("owner", k.GetOwner())
	line("created", formatTime(k.GetCreatedAt()))
	line("retired", formatTime(k.GetRetiredAt()))
	return tw.Flush()
}

// printKeys prints keys as a table, or a JSON array.
func (c *cli) printKeys(keys []*mlskeyv1.Key) error {
	if c.g.json {
		out := make([]keyJSON, 0, len(keys))
		for _, k := range keys {
			out = append(out, newKeyJSON(k))
		}
		return c.writeJSON(out)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSUITE\tROLE\tSTATE\tPROTECTION\tOWNER\tKP REF\tLAST RESORT\tCREATED")
	for _, k := range keys {
		lastResort := "-"
		if k.GetRole() == mlskeyv1.KeyRole_KEY_ROLE_INIT {
			lastResort = "no"
			if k.GetLastResort() {
				lastResort = "yes"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.GetId(), k.GetCipherSuite(), roleName(k.GetRole()),
			stateName(k.GetState()), textProtection(k.GetProtection()), orDash(oneLine(k.GetOwner())),
			orDash(shortRef(k.GetKeyPackageRef())), lastResort, orDash(formatTime(k.GetCreatedAt())))
	}
	return tw.Flush()
}

// shortRef is the start of a KeyPackageRef, enough to tell KeyPackages
// apart in a table.
func shortRef(ref []byte) string {
	if len(ref) > 8 {
		return hex.EncodeToString(ref[:8]) + "…"
	}
	return hex.EncodeToString(ref)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// optHex is hex for JSON, null when b is nil.
func optHex(b []byte) *string {
	if b == nil {
		return nil
	}
	s := hex.EncodeToString(b)
	return &s
}

// oneLine makes s safe to print as one table cell.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
