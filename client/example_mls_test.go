package client_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/mls"
)

// Publish KeyPackages whose init, leaf and signature keys live in the
// device, advertising what the MLS engine supports.
func ExampleClient_CreateMLSKeyPackages() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket(), client.CallTimeout(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sig, kps, err := c.CreateMLSKeyPackages(ctx, client.KeyPackageOptions{
		Suite:    mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519,
		Identity: []byte("bob@example.org"),
		// The engine also accepts members with X.509 credentials.
		Credentials: []uint16{mls.CredentialTypeX509},
		Count:       10,
		Lifetime:    30 * 24 * time.Hour,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintln(os.Stderr, "signature key", sig.ID())
	for _, kp := range kps {
		publish(kp.Message) // the MLSMessage, to the Delivery Service
	}
}

// Join a group: the daemon decrypts the Welcome's GroupSecrets with the init
// key and destroys the key. The engine builds the group state from the
// secrets and the GroupInfo.
func ExampleClient_OpenMLSWelcome() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var welcome []byte // the MLSMessage(Welcome) from the Delivery Service
	j, err := c.OpenMLSWelcome(ctx, welcome)
	switch {
	case errors.Is(err, client.ErrConsumed):
		log.Fatal("this Welcome's KeyPackage was already used")
	case errors.Is(err, client.ErrNotFound):
		log.Fatal("the Welcome is for none of our KeyPackages")
	case err != nil:
		log.Fatal(err)
	}
	fmt.Printf("joined group %x at epoch %d with init key %s\n", j.GroupID, j.Epoch, j.InitKeyID)
	_ = j.GroupSecrets.JoinerSecret // into the engine's key schedule
}

// Sign a FramedContentTBS from MLS code that knows only SignWithLabel.
func ExampleSignatureKey_SignWithLabel() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	key, err := c.SignatureKey(ctx, "KEY-ID")
	if err != nil {
		log.Fatal(err)
	}
	var framedContentTBS []byte // encoded by the engine
	sig, err := key.SignWithLabel(ctx, "FramedContentTBS", framedContentTBS)
	if err != nil {
		log.Fatal(err)
	}
	su, _ := mls.LookupSuite(key.Suite())
	fmt.Println(su.VerifyWithLabel(key.PublicKey(), "FramedContentTBS", framedContentTBS, sig) == nil)
}

// Get an X.509 credential for a device key: the daemon signs a request for
// its own public key, a CA issues the certificate, and the KeyPackages carry
// the chain.
func ExampleSignatureKey_CreateCSR() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	key, err := c.NewSignatureKey(ctx, mls.MLS128DHKEMP256AES128GCMSHA256P256)
	if err != nil {
		log.Fatal(err)
	}
	der, _, err := key.CreateCSR(ctx, client.CSR{CommonName: "bob", EmailAddresses: []string{"bob@example.org"}})
	if err != nil {
		log.Fatal(err)
	}
	leaf, caChain := issue(der) // the CA's part
	cert, _ := x509.ParseCertificate(leaf)
	if !cert.PublicKey.(interface{ Equal(any) bool }).Equal(key.Signer().Public()) {
		log.Fatal("the CA certified another key")
	}
	_, kps, err := c.CreateMLSKeyPackages(ctx, client.KeyPackageOptions{
		SignatureKeyID: key.ID(),
		X509Chain:      append([][]byte{leaf}, caChain...),
	})
	if err != nil {
		log.Fatal(err)
	}
	publish(kps[0].Message)
}

// Open an UpdatePath ciphertext addressed to the leaf key of a daemon
// KeyPackage (until the member's first own commit replaces that key).
func ExampleHPKEKey_DecryptWithLabel() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	leaf, err := c.HPKEKey(ctx, "LEAF-KEY-ID")
	if err != nil {
		log.Fatal(err)
	}
	var groupContext, kemOutput, ciphertext []byte // from the Commit's UpdatePath
	pathSecret, err := leaf.DecryptWithLabel(ctx, "UpdatePathNode", groupContext, kemOutput, ciphertext)
	if err != nil {
		log.Fatal(err)
	}
	_ = pathSecret // the engine derives the parent keys from it in software
}

func publish([]byte) {}

func issue(csr []byte) (leaf []byte, chain [][]byte) { return nil, nil }
