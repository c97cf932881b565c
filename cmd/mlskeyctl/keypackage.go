package main

import (
	"context"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// keyPackageJSON is one created KeyPackage in --json output.
type keyPackageJSON struct {
	KeyPackageRef       string `json:"key_package_ref"`
	InitKeyID           string `json:"init_key_id"`
	LeafEncryptionKeyID string `json:"leaf_encryption_key_id"`
	SignatureKeyID      string `json:"signature_key_id"`
	// The KeyPackage as an MLSMessage.
	KeyPackage string `json:"key_package"`
}

func newKeyPackagesJSON(resp *mlskeyv1.CreateKeyPackagesResponse) []keyPackageJSON {
	out := make([]keyPackageJSON, 0, len(resp.GetKeyPackages()))
	for _, kp := range resp.GetKeyPackages() {
		out = append(out, keyPackageJSON{
			KeyPackageRef:       hex.EncodeToString(kp.GetKeyPackageRef()),
			InitKeyID:           kp.GetInitKeyId(),
			LeafEncryptionKeyID: kp.GetLeafEncryptionKeyId(),
			SignatureKeyID:      resp.GetSignatureKey().GetId(),
			KeyPackage:          hex.EncodeToString(kp.GetKeyPackage()),
		})
	}
	return out
}

func (c *cli) keyPackageCreate(args []string) error {
	var (
		suite                        suiteFlag
		identity, chain, sigKey, out string
		count                        uint
		lastResort                   bool
		lifetime                     lifetimeFlag
		owner                        ownerFlag
		caps                         capabilityFlags
	)
	fs := c.newFlagSet("keypackage create", "--suite S (--identity NAME | --x509-chain FILE) [flags]", `Create KeyPackages, each with a fresh init key and a fresh leaf encryption
key, signed in the daemon by a new or an existing signature key.

Without --json, print one line per KeyPackage:
  <key_package_ref hex> init=<init key id> sig=<signature key id>
With --json, print an array of objects with key_package_ref, init_key_id,
leaf_encryption_key_id, signature_key_id and key_package (the KeyPackage as an
MLSMessage), bytes in hex.`, func(fs *flag.FlagSet) {
		fs.Var(&suite, "suite", "`S`, the "+suiteUsage+"\n(required unless --signature-key is given)")
		fs.StringVar(&identity, "identity", "", "use a basic credential with identity `NAME`")
		fs.StringVar(&chain, "x509-chain", "", "use an X.509 credential with the PEM certificates in `FILE`,\nend-entity first; its public key must be the signature key's")
		fs.StringVar(&sigKey, "signature-key", "", "sign with the existing signature key `ID` (default: create one)")
		fs.UintVar(&count, "count", 1, "create `N` KeyPackages, 1 to 1000")
		fs.Var(&owner, "owner-uid", "admins only: create the keys for `UID` instead of yourself")
		fs.BoolVar(&lastResort, "last-resort", false, "mark the KeyPackages last-resort: opening a Welcome does not\nconsume their init keys")
		fs.Var(&lifetime, "lifetime", "validity from now, a Go `duration` or days like 90d\n(default: the daemon's, 90 days)")
		fs.StringVar(&out, "out", "", "write the KeyPackages, MLSMessage encodings concatenated, to `FILE`\n(\"-\": stdout, instead of the text lines)")
		caps.register(fs)
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	identitySet := false
	fs.Visit(func(f *flag.Flag) { identitySet = identitySet || f.Name == "identity" })
	switch {
	case identitySet && chain != "":
		return usageErrorf("keypackage create: give --identity or --x509-chain, not both")
	case !identitySet && chain == "":
		return usageErrorf("keypackage create: --identity or --x509-chain is required")
	case identitySet && identity == "":
		return usageErrorf("keypackage create: empty --identity")
	case suite == 0 && sigKey == "":
		return usageErrorf("keypackage create: --suite is required")
	case count < 1 || count > 1000:
		return usageErrorf("keypackage create: --count must be between 1 and 1000")
	case out == "-" && c.g.json:
		return usageErrorf("keypackage create: --out - and --json both write to stdout")
	}
	// The output file is checked, and held open, before any key is made:
	// keys created and then not saved are keys nobody can use.
	var outFile *os.File
	if out != "" && out != "-" {
		if fi, err := os.Stat(out); err == nil && fi.IsDir() {
			return fmt.Errorf("keypackage create: cannot write --out %s: is a directory; nothing created", out)
		}
		f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Errorf("keypackage create: cannot write --out %s: %v; nothing created", out, err)
		}
		outFile = f
		defer func() {
			if outFile != nil {
				outFile.Close()
				os.Remove(outFile.Name())
			}
		}()
	}
	if !c.timeoutGiven(fs) {
		// Each KeyPackage costs the device two key generations: on
		// SoftHSM 265 ms a KeyPackage in a batch of 50 and 400 ms in one
		// of 200 on a loaded 2-core machine, growing with the objects in
		// the token. Waiting too long costs nothing; giving up too early
		// leaves the caller not knowing whether the batch was committed.
		c.g.timeout = defaultTimeout + time.Duration(count)*perKeyPackage
	}
	c.unsure = fmt.Sprintf("the daemon may still have created the %d KeyPackage(s): a batch is all or nothing and this cannot tell which; check with 'mlskeyctl key list --role init --state active'", count)
	cred := &mlskeyv1.Credential{}
	if chain != "" {
		certs, err := readCertChain(chain)
		if err != nil {
			return err
		}
		cred.Credential = &mlskeyv1.Credential_X509_{X509: &mlskeyv1.Credential_X509{Certificates: certs}}
	} else {
		cred.Credential = &mlskeyv1.Credential_BasicIdentity{BasicIdentity: []byte(identity)}
	}

	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		if suite == 0 {
			k, err := cl.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: sigKey})
			if err != nil {
				return err
			}
			suite = suiteFlag(k.GetCipherSuite())
		}
		req := &mlskeyv1.CreateKeyPackagesRequest{
			CipherSuite:    uint32(suite),
			SignatureKeyId: sigKey,
			Credential:     cred,
			Count:          uint32(count),
			LastResort:     lastResort,
			OwnerUid:       owner.uid,
		}
		caps.apply(req)
		if lifetime > 0 {
			req.Lifetime = durationpb.New(time.Duration(lifetime))
		}
		progress, clear := c.keyPackageProgress()
		resp, err := cl.CreateKeyPackagesWithProgress(ctx, req, progress)
		clear()
		if err != nil {
			return err
		}
		c.unsure = "" // the answer came: it says what happened
		var writeErr error
		if out != "" {
			var buf []byte
			for _, kp := range resp.GetKeyPackages() {
				buf = append(buf, kp.GetKeyPackage()...)
			}
			if out == "-" {
				_, err := c.stdout.Write(buf)
				return err
			}
			if err := saveFile(outFile, out, buf); err != nil {
				writeErr = fmt.Errorf("created %d KeyPackages but could not save them: %v", len(resp.GetKeyPackages()), err)
			} else {
				outFile = nil
			}
		}
		if c.g.json {
			err = c.writeJSON(newKeyPackagesJSON(resp))
		} else {
			tw := tabwriter.NewWriter(c.stdout, 0, 0, 1, ' ', 0)
			for _, kp := range resp.GetKeyPackages() {
				fmt.Fprintf(tw, "%x\tinit=%s\tsig=%s\n", kp.GetKeyPackageRef(), kp.GetInitKeyId(), resp.GetSignatureKey().GetId())
			}
			err = tw.Flush()
		}
		if writeErr != nil {
			return writeErr
		}
		return err
	})
}

// Timeouts of keypackage create when --timeout is not given: the usual
// default plus a share per KeyPackage, so a batch of 1000 gets 17m10s.
const (
	defaultTimeout = 30 * time.Second
	perKeyPackage  = time.Second
)

// saveFile writes data to f, a temporary file beside path, and renames it
// to path, so path holds either all of data or what it held before.
func saveFile(f *os.File, path string, data []byte) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// readCertChain reads the DER certificates of a PEM file.
func readCertChain(file string) ([][]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var certs [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: unexpected PEM block %q (want CERTIFICATE blocks only)", file, b.Type)
		}
		certs = append(certs, b.Bytes)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", file)
	}
	return certs, nil
}

// parseLifetime parses a Go duration ("720h"), a number of days ("90d"), or
// days followed by a Go duration ("1d12h"). It refuses negative durations.
func parseLifetime(s string) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 90d, 720h or 1d12h)", s)
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i > 0 && i < len(s) && s[i] == 'd' {
		days, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || days > math.MaxInt64/int64(24*time.Hour) {
			return bad()
		}
		d := time.Duration(days) * 24 * time.Hour
		if rest := s[i+1:]; rest != "" {
			r, err := time.ParseDuration(rest)
			if err != nil || r < 0 || r > math.MaxInt64-d {
				return bad()
			}
			d += r
		}
		return d, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return bad()
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return d, nil
}
