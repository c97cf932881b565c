package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// keyPackageInfoJSON is one KeyPackage of 'keypackage list --json'.
type keyPackageInfoJSON struct {
	KeyPackageRef       string `json:"key_package_ref"`
	Suite               uint32 `json:"suite"`
	Identity            string `json:"identity"`
	State               string `json:"state"`
	NotAfter            string `json:"not_after,omitempty"`
	LastResort          bool   `json:"last_resort"`
	InitKeyID           string `json:"init_key_id"`
	LeafEncryptionKeyID string `json:"leaf_encryption_key_id,omitempty"`
	SignatureKeyID      string `json:"signature_key_id,omitempty"`
	Owner               string `json:"owner"`
}

type unusedJSON struct {
	Owner      string `json:"owner"`
	Suite      uint32 `json:"suite"`
	Identity   string `json:"identity"`
	Unused     uint32 `json:"unused"`
	LastResort uint32 `json:"last_resort"`
}

func kpState(s mlskeyv1.KeyPackageState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "KEY_PACKAGE_STATE_"))
}

func (c *cli) keyPackageList(args []string) error {
	var suite suiteFlag
	var unused bool
	fs := c.newFlagSet("keypackage list", "[--unused] [--suite S] [flags]", `List your KeyPackages (an admin's: everyone's), oldest first: ref, suite,
identity, state (unused, consumed, expired, deleted), lifetime end and the
last-resort flag; then, per owner, suite and identity, how many are unused.
With --json: {"key_packages": [...], "unused": [...]}.`, func(fs *flag.FlagSet) {
		fs.BoolVar(&unused, "unused", false, "only KeyPackages not used yet")
		fs.Var(&suite, "suite", "only cipher suite `S`, the "+suiteUsage)
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		req := &mlskeyv1.ListKeyPackagesRequest{UnusedOnly: unused, CipherSuite: uint32(suite), PageSize: 1000}
		var kps []keyPackageInfoJSON
		var counts []unusedJSON
		for {
			resp, err := cl.ListKeyPackages(ctx, req)
			if err != nil {
				return err
			}
			for _, k := range resp.GetKeyPackages() {
				j := keyPackageInfoJSON{
					KeyPackageRef: hex.EncodeToString(k.GetKeyPackageRef()), Suite: k.GetCipherSuite(),
					Identity: string(k.GetIdentity()), State: kpState(k.GetState()), LastResort: k.GetLastResort(),
					InitKeyID: k.GetInitKeyId(), LeafEncryptionKeyID: k.GetLeafEncryptionKeyId(),
					SignatureKeyID: k.GetSignatureKeyId(), Owner: k.GetOwner(),
				}
				if k.GetNotAfter() != nil {
					j.NotAfter = k.GetNotAfter().AsTime().UTC().Format(time.RFC3339)
				}
				kps = append(kps, j)
			}
			if counts == nil {
				counts = []unusedJSON{}
				for _, u := range resp.GetUnused() {
					counts = append(counts, unusedJSON{Owner: u.GetOwner(), Suite: u.GetCipherSuite(),
						Identity: string(u.GetIdentity()), Unused: u.GetUnused(), LastResort: u.GetLastResort()})
				}
			}
			if resp.GetNextPageToken() == "" {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		if c.g.json {
			if kps == nil {
				kps = []keyPackageInfoJSON{}
			}
			return c.writeJSON(struct {
				KeyPackages []keyPackageInfoJSON `json:"key_packages"`
				Unused      []unusedJSON         `json:"unused"`
			}{kps, counts})
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "REF\tSUITE\tIDENTITY\tSTATE\tNOT AFTER\tLAST RESORT\tOWNER")
		for _, k := range kps {
			lr := ""
			if k.LastResort {
				lr = "yes"
			}
			fmt.Fprintf(tw, "%s\t%d\t%q\t%s\t%s\t%s\t%s\n", k.KeyPackageRef, k.Suite, k.Identity, k.State, k.NotAfter, lr, k.Owner)
		}
		fmt.Fprintln(tw, "\nOWNER\tSUITE\tIDENTITY\tUNUSED\tLAST RESORT")
		for _, u := range counts {
			fmt.Fprintf(tw, "%s\t%d\t%q\t%d\t%d\n", u.Owner, u.Suite, u.Identity, u.Unused, u.LastResort)
		}
		return tw.Flush()
	})
}

func (c *cli) keyPackageEnsure(args []string) error {
	var (
		suite                 suiteFlag
		identity, sigKey, out string
		target, minimum       uint
		lifetime              lifetimeFlag
	)
	minimum = ^uint(0)
	fs := c.newFlagSet("keypackage ensure", "--suite S --identity NAME --target N [--min M] [flags]", `Refill your stock of KeyPackages: when the unused (not last-resort) ones of
the suite and identity number M or fewer, create as many as bring them back
to N; otherwise create none. Print (and with --out write) only the new ones,
like 'keypackage create'. Run it from a timer or after uploading.`, func(fs *flag.FlagSet) {
		fs.Var(&suite, "suite", "`S`, the "+suiteUsage+" (required)")
		fs.StringVar(&identity, "identity", "", "basic credential identity `NAME` (required)")
		fs.UintVar(&target, "target", 0, "bring the stock to `N` unused KeyPackages, 1 to 1000 (required)")
		fs.UintVar(&minimum, "min", 0, "refill only when the stock is `M` or fewer (default N/2)")
		fs.StringVar(&sigKey, "signature-key", "", "sign with the existing signature key `ID` (default: a new one per refill)")
		fs.Var(&lifetime, "lifetime", "validity from now, a Go `duration` or days like 90d")
		fs.StringVar(&out, "out", "", "write the new KeyPackages, MLSMessage encodings concatenated, to `FILE`")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	if minimum == ^uint(0) {
		minimum = target / 2
	}
	switch {
	case suite == 0:
		return usageErrorf("keypackage ensure: --suite is required")
	case identity == "":
		return usageErrorf("keypackage ensure: --identity is required")
	case target < 1 || target > 1000:
		return usageErrorf("keypackage ensure: --target must be between 1 and 1000")
	case minimum >= target:
		return usageErrorf("keypackage ensure: --min must be below --target")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		req := &mlskeyv1.CreateKeyPackagesRequest{
			CipherSuite:    uint32(suite),
			SignatureKeyId: sigKey,
			Credential:     &mlskeyv1.Credential{Credential: &mlskeyv1.Credential_BasicIdentity{BasicIdentity: []byte(identity)}},
			EnsureTarget:   uint32(target),
			EnsureMin:      uint32(minimum),
		}
		if lifetime > 0 {
			req.Lifetime = durationpb.New(time.Duration(lifetime))
		}
		progress, clear := c.keyPackageProgress()
		resp, err := cl.CreateKeyPackagesWithProgress(ctx, req, progress)
		clear()
		if err != nil {
			return err
		}
		n := len(resp.GetKeyPackages())
		fmt.Fprintf(c.stderr, "%d unused KeyPackages before, %d created\n", resp.GetUnusedBefore(), n)
		if out != "" && n > 0 {
			var buf []byte
			for _, kp := range resp.GetKeyPackages() {
				buf = append(buf, kp.GetKeyPackage()...)
			}
			if err := os.WriteFile(out, buf, 0o644); err != nil {
				return fmt.Errorf("created %d KeyPackages but could not save them: %v", n, err)
			}
		}
		if c.g.json {
			return c.writeJSON(newKeyPackagesJSON(resp))
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 1, ' ', 0)
		for _, kp := range resp.GetKeyPackages() {
			fmt.Fprintf(tw, "%x\tinit=%s\tsig=%s\n", kp.GetKeyPackageRef(), kp.GetInitKeyId(), resp.GetSignatureKey().GetId())
		}
		return tw.Flush()
	})
}

func (c *cli) keyPackageDelete(args []string) error {
	fs := c.newFlagSet("keypackage delete", "REF [flags]", `Delete one of your unused KeyPackages, named by its KeyPackageRef in hex:
its init and leaf encryption keys are destroyed. Prints the init key (state
destroyed).`, nil)
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf("keypackage delete: want one KeyPackageRef")
	}
	ref, err := hex.DecodeString(pos[0])
	if err != nil || len(ref) == 0 {
		return usageErrorf("keypackage delete: %q is not a KeyPackageRef in hex", pos[0])
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		k, err := cl.DeleteKeyPackage(ctx, &mlskeyv1.DeleteKeyPackageRequest{KeyPackageRef: ref})
		if err != nil {
			return err
		}
		return c.printKey(k)
	})
}
