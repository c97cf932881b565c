package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

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
		owner ownerFlag
	)
	fs := c.newFlagSet("key list", "[flags]", `List the daemon's keys, oldest first: yours, or every owner's for an admin.
KP REF is the start of the KeyPackageRef of init and leaf encryption keys
('key show' and --json give it whole); LAST RESORT is for init keys.`, func(fs *flag.FlagSet) {
		fs.Var(&role, "role", "only keys of `ROLE`: signature, init or leaf-encryption")
		fs.Var(&state, "state", "only keys in `STATE`: active, consumed, destroyed or missing")
		fs.Var(&suite, "suite", "only keys of the `S` "+suiteUsage)
		fs.Var(&owner, "owner", "only keys of `UID` (admins; others may name only themselves)")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		keys, err := cl.ListAllKeys(ctx, &mlskeyv1.ListKeysRequest{
			Role:        mlskeyv1.KeyRole(role),
			State:       mlskeyv1.KeyState(state),
			CipherSuite: uint32(suite),
			OwnerUid:    owner.uid,
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
	var yes, cascade bool
	fs := c.newFlagSet("key delete", "ID [flags]", `Delete a key: destroy its private key in the device. The catalog keeps it in
state destroyed. Print the deleted key. On a terminal, ask first.

A signature key that unused KeyPackages use is refused unless --cascade is
given, which destroys those KeyPackages' init and leaf encryption keys too.`, func(fs *flag.FlagSet) {
		fs.BoolVar(&yes, "yes", false, "do not ask for confirmation")
		fs.BoolVar(&cascade, "cascade", false, "also destroy the keys of the unused KeyPackages that use this key\n(for an init key: its KeyPackage's leaf encryption key)")
	})
	id, err := c.parseID(fs, args)
	if err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		if !yes && c.isTerminal != nil && c.isTerminal() {
			k, err := cl.GetKey(ctx, &mlskeyv1.GetKeyRequest{Id: id})
			if err != nil {
				return err
			}
			if !c.confirm(fmt.Sprintf("Delete %s key %s (suite %d, %s, owner %s)? Its private key is destroyed for good. [y/N] ",
				roleName(k.GetRole()), k.GetId(), k.GetCipherSuite(), stateName(k.GetState()), orDash(k.GetOwner()))) {
				return fmt.Errorf("key delete: not confirmed; key %s is unchanged", k.GetId())
			}
		}
		k, err := cl.DeleteKey(ctx, &mlskeyv1.DeleteKeyRequest{Id: id, Cascade: cascade})
		if err != nil {
			return err
		}
		return c.printKey(k)
	})
}

// confirm asks question on stderr and reads the answer from stdin: true
// for y or yes. Ctrl-C while it waits is a no.
func (c *cli) confirm(question string) bool {
	fmt.Fprint(c.stderr, question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			return true
		}
	case <-c.ctx.Done():
		fmt.Fprintln(c.stderr)
	}
	return false
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
