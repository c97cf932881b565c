package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/keystore"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"github.com/mlskeyd/mlskeyd/tpm/attest"
)

// attestJSON is the evidence as `key attest --json` prints it and
// `attest verify` reads it back, so evidence can be checked elsewhere,
// without the daemon, with every fact the check established.
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
	EndorsementKey          string   `json:"endorsement_key"`
	factsJSON
}

// factsJSON are the results of the check: "verified" means consistent AND
// anchored to a trusted TPM.
type factsJSON struct {
	Verified      bool     `json:"verified"`
	Consistent    bool     `json:"consistent"`
	Anchored      bool     `json:"anchored"`
	Anchor        string   `json:"anchor"`
	AKName        string   `json:"ak_name"`
	KeyName       string   `json:"key_name"`
	KeyAttributes []string `json:"key_attributes"`
	EKCertificate string   `json:"ek_certificate_subject,omitempty"`
	EKIssuer      string   `json:"ek_certificate_issuer,omitempty"`
}

func factsOf(r *attest.Result) factsJSON {
	f := factsJSON{
		Verified: r.Anchored, Consistent: true, Anchored: r.Anchored, Anchor: r.Anchor,
		AKName: hex.EncodeToString(r.AKName), KeyName: hex.EncodeToString(r.KeyName), KeyAttributes: r.KeyAttributes,
	}
	if r.EKCertificate != nil {
		f.EKCertificate = r.EKCertificate.Subject.String()
		f.EKIssuer = r.EKCertificate.Issuer.String()
		if f.EKCertificate == "" {
			f.EKCertificate = "(empty; the TPM is named in subjectAltName)"
		}
	}
	return f
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
		{"endorsement_key", a.EndorsementKey, &out.EndorsementKey},
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

// trustFlags are the trust anchors both attest commands take.
type trustFlags struct {
	ekRoots, ak     string
	allowUnanchored bool
	akOut           string // key attest only
}

func (t *trustFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.ekRoots, "ek-roots", "", "trust TPMs whose endorsement key certificate chains to a CA in this PEM `FILE` (the TPM vendors' CAs); the daemon proves its attestation key lives beside that EK by credential activation")
	fs.StringVar(&t.ak, "ak", "", "trust only the attestation key in this PEM `FILE` (a PUBLIC KEY enrolled earlier, e.g. with --ak-out)")
	fs.BoolVar(&t.allowUnanchored, "allow-unanchored", false, "accept evidence that is only consistent, with no trust anchor (exit 0 but report \"NOT anchored\")")
}

// trust builds the verifier's trust from the flags; activate, when not
// nil, asks the daemon to activate a credential.
func (t *trustFlags) trust(activate func(blob, secret []byte) ([]byte, error)) (attest.Trust, error) {
	var tr attest.Trust
	if t.ekRoots != "" {
		b, err := os.ReadFile(t.ekRoots)
		if err != nil {
			return tr, fmt.Errorf("--ek-roots: %w", err)
		}
		tr.EKRoots = x509.NewCertPool()
		if !tr.EKRoots.AppendCertsFromPEM(b) {
			return tr, fmt.Errorf("--ek-roots: %s holds no PEM certificate", t.ekRoots)
		}
		tr.Activate = activate
	}
	if t.ak != "" {
		k, err := readAKFile(t.ak)
		if err != nil {
			return tr, fmt.Errorf("--ak: %w", err)
		}
		tr.AK = k
	}
	return tr, nil
}

func readAKFile(path string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s is not a PEM PUBLIC KEY", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA public key", path)
	}
	return ek, nil
}

func writeAKFile(path string, a *keystore.Attestation) error {
	k, err := attest.AttestationKeyPublic(a)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

var errUnanchored = errors.New("the evidence is consistent but NOT anchored to a trusted TPM: anyone can make such evidence in software; give --ek-roots FILE or --ak FILE, or --allow-unanchored to accept it as it is")

func verifyEvidence(a *keystore.Attestation, pub, nonce []byte, trust attest.Trust) (*attest.Result, error) {
	if a.Format != attest.Format {
		return nil, fmt.Errorf("attestation format %q cannot be verified by this mlskeyctl", a.Format)
	}
	return attest.Verify(a, pub, nonce, trust)
}

// reportAttestation prints the result of a check, and refuses an unanchored result
// unless it was allowed.
func (c *cli) reportAttestation(out any, r *attest.Result, id string, pub, nonce []byte, tf *trustFlags, extra func(*tabwriter.Writer)) error {
	if c.g.json {
		if err := c.writeJSON(out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		if r.Anchored {
			fmt.Fprintf(tw, "verified:\tyes, anchored to a trusted TPM (%s)\n", r.Anchor)
		} else {
			fmt.Fprintf(tw, "verified:\tconsistent, NOT anchored to a trusted TPM\n")
		}
		fmt.Fprintf(tw, "key:\t%s\n", id)
		fmt.Fprintf(tw, "public key:\t%x\n", pub)
		fmt.Fprintf(tw, "nonce:\t%x\n", nonce)
		fmt.Fprintf(tw, "key name:\t%x\n", r.KeyName)
		fmt.Fprintf(tw, "key attributes:\t%s\n", strings.Join(r.KeyAttributes, " "))
		fmt.Fprintf(tw, "attestation key name:\t%x\n", r.AKName)
		if r.EKCertificate != nil {
			fmt.Fprintf(tw, "EK certificate issuer:\t%s\n", r.EKCertificate.Issuer)
		}
		if extra != nil {
			extra(tw)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !r.Anchored && !tf.allowUnanchored {
		return errUnanchored
	}
	return nil
}

func (c *cli) keyAttest(args []string) error {
	var nonceHex string
	var tf trustFlags
	fs := c.newFlagSet("key attest", "ID [--nonce HEX] [--ek-roots FILE | --ak FILE] [flags]", `Ask the device for evidence that key ID lives in it, bound to a nonce (yours,
or 32 random bytes), and verify it: for a TPM, TPM2_Certify of the key by an
attestation key (AK) under the endorsement hierarchy. That the evidence is
consistent proves nothing by itself (it can be made in software); it is anchored to a
trusted TPM by --ek-roots (the TPM's endorsement key certificate chains to
one of these CAs, and the daemon decrypts a credential made here for the AK
and encrypted to that EK, which only the TPM holding both can) or by --ak
(the AK is one enrolled before, e.g. with --ak-out). Without either the
command reports "NOT anchored" and fails unless --allow-unanchored.
--json prints the evidence and facts for 'mlskeyctl attest verify'.`, func(fs *flag.FlagSet) {
		fs.StringVar(&nonceHex, "nonce", "", "the `HEX` nonce, 1 to 64 bytes (default: 32 random bytes)")
		tf.register(fs)
		fs.StringVar(&tf.akOut, "ak-out", "", "after an anchored check, write the attestation key to `FILE` (PEM) to pin it later with --ak")
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
			AttestationKey: r.GetAttestationKey(), KeyPublicArea: r.GetKeyPublicArea(), Certificates: r.GetEndorsementCertificates(),
			EndorsementKey: r.GetEndorsementKey()}
		trust, err := tf.trust(daemonActivation(ctx, cl, id, a.EndorsementKey))
		if err != nil {
			return err
		}
		res, err := verifyEvidence(a, k.GetPublicKey(), nonce, trust)
		if err != nil {
			return fmt.Errorf("the daemon's attestation of key %s does not verify: %w", id, err)
		}
		if tf.akOut != "" {
			if !res.Anchored {
				return fmt.Errorf("--ak-out: not writing an attestation key that is not anchored to a trusted TPM (give --ek-roots)")
			}
			if err := writeAKFile(tf.akOut, a); err != nil {
				return fmt.Errorf("--ak-out: %w", err)
			}
		}
		out := attestJSON{
			KeyID: id, PublicKey: hex.EncodeToString(k.GetPublicKey()), Nonce: nonceHex, Format: a.Format,
			Statement: hex.EncodeToString(a.Statement), Signature: hex.EncodeToString(a.Signature),
			AttestationKey: hex.EncodeToString(a.AttestationKey), KeyPublicArea: hex.EncodeToString(a.KeyPublicArea),
			EndorsementCertificates: []string{}, EndorsementKey: hex.EncodeToString(a.EndorsementKey),
			factsJSON: factsOf(res),
		}
		for _, cert := range a.Certificates {
			out.EndorsementCertificates = append(out.EndorsementCertificates, hex.EncodeToString(cert))
		}
		return c.reportAttestation(out, res, id, k.GetPublicKey(), nonce, &tf, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "format:\t%s\n", a.Format)
			fmt.Fprintf(tw, "endorsement certificates:\t%d\n", len(a.Certificates))
		})
	})
}

// daemonActivation asks the daemon to activate a credential for the
// attestation of key id.
func daemonActivation(ctx context.Context, cl *client.Client, id string, ek []byte) func(blob, secret []byte) ([]byte, error) {
	return func(blob, secret []byte) ([]byte, error) {
		r, err := cl.ActivateCredential(ctx, &mlskeyv1.ActivateCredentialRequest{
			KeyId: id, EndorsementKey: ek, CredentialBlob: blob, Secret: secret,
		})
		if err != nil {
			return nil, err
		}
		return r.GetCertInfo(), nil
	}
}

func (c *cli) attestVerify(args []string) error {
	var in string
	var tf trustFlags
	fs := c.newFlagSet("attest verify", "[--in FILE] [--ak FILE | --ek-roots FILE] [flags]", `Verify evidence printed by 'mlskeyctl key attest --json' (from stdin unless
--in is given): the signature, the nonce, that the certified key is the MLS
public key in the evidence, and that the attestation key is anchored to a
trusted TPM. --ak (an attestation key enrolled before) needs no daemon.
--ek-roots checks the endorsement key certificate chain and asks the daemon
at --socket (the one whose TPM made the evidence) to activate a credential
for the attestation key. Without either, consistent evidence is reported as
"NOT anchored" and the command fails unless --allow-unanchored.`, func(fs *flag.FlagSet) {
		fs.StringVar(&in, "in", "", "read the evidence from `FILE` (\"-\": stdin)")
		tf.register(fs)
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
	check := func(activate func(blob, secret []byte) ([]byte, error)) error {
		trust, err := tf.trust(activate)
		if err != nil {
			return err
		}
		res, err := verifyEvidence(a, pub, nonce, trust)
		if err != nil {
			return err
		}
		out := struct {
			KeyID     string `json:"key_id"`
			PublicKey string `json:"public_key"`
			Nonce     string `json:"nonce"`
			factsJSON
		}{j.KeyID, j.PublicKey, hex.EncodeToString(nonce), factsOf(res)}
		return c.reportAttestation(out, res, j.KeyID, pub, nonce, &tf, nil)
	}
	if tf.ekRoots == "" {
		return check(nil)
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		return check(daemonActivation(ctx, cl, j.KeyID, a.EndorsementKey))
	})
}
