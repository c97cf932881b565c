package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/server"
)

// welcomeJSON is welcome open --json: the GroupSecrets and what the daemon
// learned from the GroupInfo. group_info, group_id and epoch are empty/0 when
// the Welcome uses PSKs (the caller then decrypts the GroupInfo itself).
type welcomeJSON struct {
	KeyPackageRef string    `json:"key_package_ref"`
	InitKeyID     string    `json:"init_key_id"`
	CipherSuite   uint32    `json:"cipher_suite"`
	GroupID       string    `json:"group_id"`
	Epoch         uint64    `json:"epoch"`
	GroupInfo     string    `json:"group_info"`
	JoinerSecret  string    `json:"joiner_secret"`
	PathSecret    *string   `json:"path_secret"`
	PSKs          []pskJSON `json:"psks"`
}

// pskJSON is a PreSharedKeyID, bytes in hex.
type pskJSON struct {
	PSKType         uint32 `json:"psk_type"`
	PSKID           string `json:"psk_id"`
	ResumptionUsage uint32 `json:"resumption_usage"`
	PSKGroupID      string `json:"psk_group_id"`
	PSKEpoch        uint64 `json:"psk_epoch"`
	PSKNonce        string `json:"psk_nonce"`
}

func newWelcomeJSON(r *mlskeyv1.OpenWelcomeResponse) welcomeJSON {
	gs := r.GetGroupSecrets()
	out := welcomeJSON{
		KeyPackageRef: hex.EncodeToString(r.GetKeyPackageRef()),
		InitKeyID:     r.GetInitKeyId(),
		CipherSuite:   r.GetCipherSuite(),
		GroupID:       hex.EncodeToString(r.GetGroupId()),
		Epoch:         r.GetEpoch(),
		GroupInfo:     hex.EncodeToString(r.GetGroupInfo()),
		JoinerSecret:  hex.EncodeToString(gs.GetJoinerSecret()),
		PathSecret:    optHex(gs.GetPathSecret()),
		PSKs:          []pskJSON{},
	}
	for _, p := range gs.GetPsks() {
		out.PSKs = append(out.PSKs, pskJSON{
			PSKType:         p.GetPskType(),
			PSKID:           hex.EncodeToString(p.GetPskId()),
			ResumptionUsage: p.GetResumptionUsage(),
			PSKGroupID:      hex.EncodeToString(p.GetPskGroupId()),
			PSKEpoch:        p.GetPskEpoch(),
			PSKNonce:        hex.EncodeToString(p.GetPskNonce()),
		})
	}
	return out
}

func (c *cli) welcomeOpen(args []string) error {
	var in string
	fs := c.newFlagSet("welcome open", "[--in FILE] [flags]", `Open a Welcome (an MLSMessage) addressed to one of the daemon's KeyPackages:
decrypt its GroupSecrets with the init key, which is then consumed unless the
KeyPackage is last-resort. The Welcome is read from stdin unless --in is given.

The text output shows the KeyPackage, cipher suite, group id and epoch. The
secrets (joiner_secret, path_secret, psks) and the decrypted GroupInfo are
printed only with --json.`, func(fs *flag.FlagSet) {
		fs.StringVar(&in, "in", "", "read the Welcome from `FILE` (\"-\": stdin)")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	welcome, err := c.readField(in, "welcome", server.MaxWelcomeSize)
	if err != nil {
		return err
	}
	if len(welcome) == 0 {
		return fmt.Errorf("empty Welcome")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.OpenWelcome(ctx, &mlskeyv1.OpenWelcomeRequest{Welcome: welcome})
		if err != nil {
			return err
		}
		if c.g.json {
			return c.writeJSON(newWelcomeJSON(resp))
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "key package ref:\t%x\n", resp.GetKeyPackageRef())
		fmt.Fprintf(tw, "init key:\t%s\n", resp.GetInitKeyId())
		fmt.Fprintf(tw, "cipher suite:\t%s\n", suiteText(resp.GetCipherSuite(), ""))
		if len(resp.GetGroupInfo()) == 0 {
			fmt.Fprintf(tw, "group info:\tnot decrypted: the Welcome uses PSKs (see --json)\n")
		} else {
			fmt.Fprintf(tw, "group id:\t%x\n", resp.GetGroupId())
			fmt.Fprintf(tw, "epoch:\t%d\n", resp.GetEpoch())
		}
		return tw.Flush()
	})
}
