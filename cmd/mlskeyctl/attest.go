package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/keystore"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
)

// attestJSON is the evidence as `key attest --json` prints it and
// `attest verify` reads it back, so evidence can be checked elsewhere,
// without the daemon.
type attestJSON struct {
	KeyID                   string   `json:"key_id"`
	PublicKey               string   `json:"public_key"`
	Nonce                   string   `json:"nonce"`
	Format                  string   `json:"format"`
	Statement               string   `json:"statement"`
	Signature               string   `json:"signature"`
	AttestationKey          string   `json:"attestation_key"`
	KeyPublicArea           string   `json:"key_public_area"`
	EndorsementCertificates []string `json:"endorsement_certificates"`
	Verified                bool     `json:"verified"`
}

func (a *attestJSON) attestation() (*keystore.Attestation, []byte, []byte, error) {
	dec := func(field, s string) ([]byte, error) {
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%s: not hex", field)
		}
		return b, nil
	}
	out := &keystore.Attestation{Format: a.Format}
	var pub, nonce []byte
	var err error
	for _, f := range []struct {
		name string
		in   string
		out  *[]byte
	}{
		{"public_key", a.PublicKey, &pub}, {"nonce", a.Nonce, &nonce},
		{"statement", a.Statement, &out.Statement}, {"signature", a.Signature, &out.Signature},
		{"attestation_key", a.AttestationKey, &out.AttestationKey}, {"key_public_area", a.KeyPublicArea, &out.KeyPublicArea},
	} {
		if *f.out, err = dec(f.name, f.in); err != nil {
			return nil, nil, nil, err
		}
	}
	for _, c := range a.EndorsementCertificates {
		b, err := dec("endorsement_certificates", c)
		if err != nil {
			return nil, nil, nil, err
		}
		out.Certificates = append(out.Certificates, b)
	}
	return out, pub, nonce, nil
}

func verifyEvidence(a *keystore.Attestation, pub, nonce []byte) error {
	if a.Format != attest.Format {
		return fmt.Errorf("attestation format %q cannot be verified by this mlskeyctl", a.Format)
	}
	return attest.VerifyCertify(a, pub, nonce)
}

func (c *cli) keyAttest(args []string) error {
	var nonceHex string
	fs := c.newFlagSet("key attest", "ID [--nonce HEX] [flags]", `Ask the device for evidence that key ID lives in it, bound to a nonce (yours,
or 32 random bytes), and verify it: for a TPM, TPM2_Certify of the key by an attestation
key under the endorsement hierarchy. The check proves the key is a
non-exportable key of the TPM that made the attestation key; that this TPM
is genuine needs its endorsement certificate chain, which is printed when
the TPM has one. --json prints the evidence for 'mlskeyctl attest verify'.`, func(fs *flag.FlagSet) {
		fs.StringVar(&nonceHex, "nonce", "", "the `HEX` nonce, 1 to 64 bytes (default: 32 random bytes)")
	})
	id, err := c.parseID(fs, args)
	if err != nil {
		return err
	}
	if nonceHex == "" {
		// A fresh random nonce proves the evidence was made now; one of
		// the verifier's own choice is only needed when a third party
		// checks the --json evidence.
		b := make([]byte, 32)
		rand.Read(b) // never fails on Linux
		nonceHex = hex.EncodeToString(b)
	}
	nonce, err := hex.DecodeString(nonceHex)
	if err != nil || len(nonce) == 0 || len(nonce) > 64 {
		return usageErrorf("key attest: --nonce must be 1 to 64 bytes of hex")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		k, err := cl.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: id})
		if err != nil {
			return err
		}
		r, err := cl.AttestKey(ctx, &mlskeyv1.AttestKeyRequest{KeyId: id, Nonce: nonce})
		if err != nil {
			return err
		}
		a := &keystore.Attestation{Format: r.GetFormat(), Statement: r.GetStatement(), Signature: r.GetSignature(),
			AttestationKey: r.GetAttestationKey(), KeyPublicArea: r.GetKeyPublicArea(), Certificates: r.GetEndorsementCertificates()}
		if err := verifyEvidence(a, k.GetPublicKey(), nonce); err != nil {
			return fmt.Errorf("the daemon's attestation of key %s does not verify: %w", id, err)
		}
		out := attestJSON{
			KeyID: id, PublicKey: hex.EncodeToString(k.GetPublicKey()), Nonce: nonceHex, Format: a.Format,
			Statement: hex.EncodeToString(a.Statement), Signature: hex.EncodeToString(a.Signature),
			AttestationKey: hex.EncodeToString(a.AttestationKey), KeyPublicArea: hex.EncodeToString(a.KeyPublicArea),
			EndorsementCertificates: []string{}, Verified: true,
		}
		for _, cert := range a.Certificates {
			out.EndorsementCertificates = append(out.EndorsementCertificates, hex.EncodeToString(cert))
		}
		if c.g.json {
			return c.writeJSON(out)
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "key:\t%s\n", id)
		fmt.Fprintf(tw, "format:\t%s\n", a.Format)
		fmt.Fprintf(tw, "verified:\tyes (nonce %s, public key %x)\n", nonceHex, k.GetPublicKey())
		fmt.Fprintf(tw, "attestation key:\t%x\n", a.AttestationKey)
		fmt.Fprintf(tw, "endorsement certificates:\t%d\n", len(a.Certificates))
		return tw.Flush()
	})
}

func (c *cli) attestVerify(args []string) error {
	var in string
	fs := c.newFlagSet("attest verify", "[--in FILE] [flags]", `Verify evidence printed by 'mlskeyctl key attest --json' (from stdin unless
--in is given), without the daemon: the signature, the nonce, and that the
certified key is the MLS public key in the evidence.`, func(fs *flag.FlagSet) {
		fs.StringVar(&in, "in", "", "read the evidence from `FILE` (\"-\": stdin)")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	b, err := c.readInput(in)
	if err != nil {
		return err
	}
	var j attestJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("evidence is not the JSON of 'mlskeyctl key attest --json': %w", err)
	}
	a, pub, nonce, err := j.attestation()
	if err != nil {
		return err
	}
	if err := verifyEvidence(a, pub, nonce); err != nil {
		return err
	}
	if c.g.json {
		return c.writeJSON(map[string]any{"key_id": j.KeyID, "verified": true})
	}
	fmt.Fprintf(c.stdout, "verified: key %s, public key %s, nonce %s\n", j.KeyID, j.PublicKey, j.Nonce)
	return nil
}
