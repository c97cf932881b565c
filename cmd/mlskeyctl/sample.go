package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// The sample commands print well-formed RFC 9420 structures, so that
// signing can be tried from a shell: strict content mode refuses anything
// that is not the structure its label names.
func init() {
	groups["sample"] = group{`Commands:
  framed-content   print a sample FramedContentTBS to sign with --label FramedContentTBS`,
		map[string]func(*cli, []string) error{
			"framed-content": (*cli).sampleFramedContent,
		}}
}

func (c *cli) sampleFramedContent(args []string) error {
	var (
		suite    suiteFlag
		key, out string
		data     string
	)
	fs := c.newFlagSet("sample framed-content", "(--key ID | --suite S) [flags]", `Print a FramedContentTBS (RFC 9420 §6.1) for a signature key's cipher suite:
an application message from member 0 in epoch 1 of group "mlskeyctl sample",
as a private_message. It is what an MLS engine hands to the daemon to sign
with --label FramedContentTBS:

  mlskeyctl sample framed-content --key ID | mlskeyctl sign --key ID --label FramedContentTBS

The bytes go to stdout (or --out FILE); with --json, {"label", "content"} in
hex. With --key the daemon is asked for the key's suite; --suite needs no
daemon.`, func(fs *flag.FlagSet) {
		fs.StringVar(&key, "key", "", "build the structure for the suite of signature key `ID`")
		fs.Var(&suite, "suite", "build it for cipher suite `S`, the "+suiteUsage)
		fs.StringVar(&data, "data", "hello from mlskeyctl", "the application data, `TEXT`")
		fs.StringVar(&out, "out", "", "write the bytes to `FILE` instead of stdout")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	switch {
	case key == "" && suite == 0:
		return usageErrorf("sample framed-content: --key or --suite is required")
	case key != "" && suite != 0:
		return usageErrorf("sample framed-content: give --key or --suite, not both")
	case out != "" && c.g.json:
		return usageErrorf("sample framed-content: give --out or --json, not both")
	}
	if key != "" {
		err := c.withClient(func(ctx context.Context, cl *client.Client) error {
			k, err := cl.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: key})
			if err != nil {
				return err
			}
			if k.GetRole() != mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE {
				return fmt.Errorf("key %s is a %s key, not a signature key", key, roleName(k.GetRole()))
			}
			suite = suiteFlag(k.GetCipherSuite())
			return nil
		})
		if err != nil {
			return err
		}
	}
	tbs, err := sampleFramedContentTBS(mls.CipherSuite(suite), []byte(data))
	if err != nil {
		return err
	}
	switch {
	case c.g.json:
		return c.writeJSON(struct {
			Label   string `json:"label"`
			Content string `json:"content"`
		}{mls.LabelFramedContentTBS, hex.EncodeToString(tbs)})
	case out != "":
		return os.WriteFile(out, tbs, 0o644)
	}
	_, err = c.stdout.Write(tbs)
	return err
}

// sampleFramedContentTBS builds the FramedContentTBS of an application
// message in a group of the suite; the hashes in its GroupContext are
// zero, which the signer cannot tell from real ones.
func sampleFramedContentTBS(id mls.CipherSuite, data []byte) ([]byte, error) {
	su, err := mls.LookupSuite(id)
	if err != nil {
		return nil, fmt.Errorf("cipher suite %d: %w", id, err)
	}
	gc := &mls.GroupContext{
		Version:                 mls.ProtocolVersionMLS10,
		CipherSuite:             id,
		GroupID:                 []byte("mlskeyctl sample"),
		Epoch:                   1,
		TreeHash:                make([]byte, su.HashSize()),
		ConfirmedTranscriptHash: make([]byte, su.HashSize()),
	}
	tbs := &mls.FramedContentTBS{
		Version:    mls.ProtocolVersionMLS10,
		WireFormat: mls.WireFormatPrivateMessage,
		Content: mls.FramedContent{
			GroupID:         gc.GroupID,
			Epoch:           gc.Epoch,
			Sender:          mls.Sender{Type: mls.SenderTypeMember, LeafIndex: 0},
			ContentType:     mls.ContentTypeApplication,
			ApplicationData: data,
		},
		Context: gc,
	}
	return tbs.Marshal(), nil
}
