package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// hexFlag is a flag holding bytes in hex.
type hexFlag struct {
	b   []byte
	set bool
}

func (h *hexFlag) String() string { return hex.EncodeToString(h.b) }

func (h *hexFlag) Set(v string) error {
	b, err := hex.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("not hex")
	}
	h.b, h.set = b, true
	return nil
}

func (c *cli) decrypt(args []string) error {
	var (
		key, label, out     string
		kem, ct, decContext hexFlag
	)
	fs := c.newFlagSet("decrypt", "--key ID --kem-output HEX --ciphertext HEX [--context HEX] [flags]", `Decrypt an HPKE ciphertext with a leaf encryption key (RFC 9420
DecryptWithLabel): the path secret of an UpdatePath node encrypted to this
member. Print the plaintext in hex, or write it to --out. The plaintext is a
secret: prefer --out FILE or --json into a program over a terminal.`, func(fs *flag.FlagSet) {
		fs.StringVar(&key, "key", "", "the leaf encryption key's `ID` (required)")
		fs.StringVar(&label, "label", "UpdatePathNode", "the `LABEL` without \"MLS 1.0 \"; the daemon serves UpdatePathNode")
		fs.Var(&kem, "kem-output", "the HPKECiphertext's kem_output in `HEX` (required)")
		fs.Var(&ct, "ciphertext", "the HPKECiphertext's ciphertext in `HEX` (required)")
		fs.Var(&decContext, "context", "the context in `HEX`: the GroupContext for UpdatePathNode (default empty)")
		fs.StringVar(&out, "out", "", "write the plaintext's raw bytes to `FILE` (mode 0600) instead of printing hex")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	switch {
	case key == "":
		return usageErrorf("decrypt: --key is required")
	case !kem.set || len(kem.b) == 0:
		return usageErrorf("decrypt: --kem-output is required")
	case !ct.set || len(ct.b) == 0:
		return usageErrorf("decrypt: --ciphertext is required")
	case strings.HasPrefix(label, "MLS 1.0 "):
		return usageErrorf("decrypt: give --label without the \"MLS 1.0 \" prefix")
	case out != "" && c.g.json:
		return usageErrorf("decrypt: give --out or --json, not both")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.DecryptWithLabel(ctx, &mlskeyv1.DecryptWithLabelRequest{
			KeyId: key, Label: label, Context: decContext.b, KemOutput: kem.b, Ciphertext: ct.b,
		})
		if err != nil {
			return err
		}
		pt := resp.GetPlaintext()
		switch {
		case out != "":
			return os.WriteFile(out, pt, 0o600)
		case c.g.json:
			return c.writeJSON(struct {
				Plaintext string `json:"plaintext"`
			}{hex.EncodeToString(pt)})
		}
		_, err = fmt.Fprintln(c.stdout, hex.EncodeToString(pt))
		return err
	})
}
