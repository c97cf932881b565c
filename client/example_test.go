package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// Sign a FramedContentTBS with a key held by mlskeyd.
func ExampleClient_Sign() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var framedContentTBS []byte // the TLS encoding built by the MLS library
	sig, err := c.Sign(ctx, "KEY-ID", "FramedContentTBS", framedContentTBS)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%x\n", sig)
}

// Create a signature key, then list every active signature key.
func ExampleDial() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	key, err := c.CreateSignatureKey(ctx, &mlskeyv1.CreateSignatureKeyRequest{CipherSuite: 1})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "created %s, public key %x\n", key.GetId(), key.GetPublicKey())

	keys, err := c.ListAllKeys(ctx, &mlskeyv1.ListKeysRequest{
		Role:  mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE,
		State: mlskeyv1.KeyState_KEY_STATE_ACTIVE,
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range keys {
		fmt.Println(k.GetId(), k.GetCipherSuite())
	}
}
