package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

const suiteUsage = "cipher suite: a number (1, 0x0001) or an RFC 9420 name\n(MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)"

func (c *cli) keyCreate(args []string) error {
	var suite suiteFlag
	var owner ownerFlag
	fs := c.newFlagSet("key create", "--suite S [flags]", "Create a signature key for a cipher suite and print it.", func(fs *flag.FlagSet) {
		fs.Var(&suite, "suite", "`S`, the "+suiteUsage+" (required)")
		fs.Var(&owner, "owner-uid", "admins only: create the key for `UID` instead of yourself")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	if suite == 0 {
		return usageErrorf("key create: --suite is required")
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		k, err := cl.CreateSignatureKey(ctx, &mlskeyv1.CreateSignatureKeyRequest{CipherSuite: uint32(suite), OwnerUid: owner.uid})
		if err != nil {
			return err
		}
		return c.printKey(k)
	})
}

func (c *cli) keyList(args []string) error {
	var (
		suite suiteFlag
		role  roleFlag
		state stateFlag
	)
	fs := c.newFlagSet("key list", "[flags]", "List the daemon's keys, oldest first.", func(fs *flag.FlagSet) {
		fs.Var(&role, "role", "only keys of `ROLE`: signature, init or leaf-encryption")
		fs.Var(&state, "state", "only keys in `STATE`: active, consumed, destroyed or missing")
		fs.Var(&suite, "suite", "only keys of the `S` "+suiteUsage)
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		keys, err := cl.ListAllKeys(ctx, &mlskeyv1.ListKeysRequest{
			Role:        mlskeyv1.KeyRole(role),
			State:       mlskeyv1.KeyState(state),
			CipherSuite: uint32(suite),
		})
		if err != nil {
			return err
		}
		return c.printKeys(keys)
	})
}

func (c *cli) keyShow(args []string) error {
	fs := c.newFlagSet("key show", "ID [flags]", "Show a key.", nil)
	id, err := c.parseID(fs, args)
	if err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		k, err := cl.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: id})
		if err != nil {
			return err
		}
		return c.printKey(k)
	})
}

func (c *cli) keyDelete(args []string) error {
	fs := c.newFlagSet("key delete", "ID [flags]", `Delete a key: destroy its private key in the device. The catalog keeps it in
state destroyed. Print the deleted key.`, nil)
	id, err := c.parseID(fs, args)
	if err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		k, err := cl.DeleteKey(ctx, &mlskeyv1.DeleteKeyRequest{Id: id})
		if err != nil {
			return err
		}
		return c.printKey(k)
	})
}

// ownerFlag is an optional uid: unset means the caller.
type ownerFlag struct{ uid *uint32 }

func (o *ownerFlag) String() string {
	if o.uid == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*o.uid), 10)
}

func (o *ownerFlag) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return fmt.Errorf("%q is not a uid", v)
	}
	u := uint32(n)
	o.uid = &u
	return nil
}
