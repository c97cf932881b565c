package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/server"
)

func (c *cli) sign(args []string) error {
	var key, label, in string
	fs := c.newFlagSet("sign", "--key ID --label LABEL [--in FILE] [flags]", `Sign SignContent{"MLS 1.0 " + LABEL, content} (RFC 9420 SignWithLabel) with
a signature key and print the signature in hex, in its MLS encoding (DER for
ECDSA, R||S for EdDSA). The content is read from stdin unless --in is given.`, func(fs *flag.FlagSet) {
		fs.StringVar(&key, "key", "", "the signature key's `ID` (required)")
		fs.StringVar(&label, "label", "", "the `LABEL` without \"MLS 1.0 \": FramedContentTBS, LeafNodeTBS,\nKeyPackageTBS or GroupInfoTBS (required)")
		fs.StringVar(&in, "in", "", "read the content from `FILE` (\"-\": stdin)")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	switch {
	case key == "":
		return usageErrorf("sign: --key is required")
	case label == "":
		return usageErrorf("sign: --label is required")
	case strings.HasPrefix(label, "MLS 1.0 "):
		return usageErrorf("sign: give --label without the \"MLS 1.0 \" prefix")
	}
	content, err := c.readField(in, "content", server.MaxContentSize)
	if err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		sig, err := cl.Sign(ctx, key, label, content)
		if err != nil {
			return err
		}
		if c.g.json {
			return c.writeJSON(struct {
				Signature string `json:"signature"`
			}{hex.EncodeToString(sig)})
		}
		_, err = fmt.Fprintln(c.stdout, hex.EncodeToString(sig))
		return err
	})
}

// readField is readInput for a request field the daemon bounds: an input
// over max bytes is refused here, naming the field, instead of being sent
// and refused by gRPC with a message about message sizes. At most max+1
// bytes are read.
func (c *cli) readField(file, field string, max int) ([]byte, error) {
	r := c.stdin
	if file != "" && file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %v", field, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s: more than %d bytes, over the daemon's limit", field, max)
	}
	return b, nil
}

// readInput reads FILE, or stdin for "" and "-".
func (c *cli) readInput(file string) ([]byte, error) {
	if file == "" || file == "-" {
		b, err := io.ReadAll(c.stdin)
		if err != nil {
			return nil, fmt.Errorf("reading stdin: %v", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err // "open FILE: no such file or directory"
	}
	return b, nil
}
