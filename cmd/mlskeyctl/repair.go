package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/mlskeyd/mlskeyd/client"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

type repairJSON struct {
	DestroyedStrays []string `json:"destroyed_strays"`
	RetiredMissing  []string `json:"retired_missing"`
	StrayKeyIDs     []string `json:"stray_key_ids"`
	MissingKeyIDs   []string `json:"missing_key_ids"`
}

func (c *cli) repair(args []string) error {
	var destroy, retire bool
	fs := c.newFlagSet("repair", "[--destroy-strays] [--retire-missing]", `Act on what the daemon quarantined at start-up, after you have checked it
(admins only). 'mlskeyctl status' lists both kinds:
  stray device keys   objects on the device the catalog cannot account for;
                      they may belong to another installation or catalog
  missing keys        catalog keys whose device object was not found; they
                      come back by themselves if the object does
Without flags, repair only lists them.`, func(fs *flag.FlagSet) {
		fs.BoolVar(&destroy, "destroy-strays", false, "destroy every stray device key (listed again by the daemon now)")
		fs.BoolVar(&retire, "retire-missing", false, "mark every missing key destroyed")
	})
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	return c.withClient(func(ctx context.Context, cl *client.Client) error {
		r, err := cl.Repair(ctx, &mlskeyv1.RepairRequest{DestroyStrays: destroy, RetireMissing: retire})
		if err != nil {
			return err
		}
		out := repairJSON{
			DestroyedStrays: orEmpty(r.GetDestroyedStrays()), RetiredMissing: orEmpty(r.GetRetiredMissing()),
			StrayKeyIDs: orEmpty(r.GetStrayKeyIds()), MissingKeyIDs: orEmpty(r.GetMissingKeyIds()),
		}
		if c.g.json {
			return c.writeJSON(out)
		}
		line := func(name string, ids []string) {
			fmt.Fprintf(c.stdout, "%s: %d", name, len(ids))
			if len(ids) > 0 {
				fmt.Fprintf(c.stdout, " (%s)", oneLine(strings.Join(ids, " ")))
			}
			fmt.Fprintln(c.stdout)
		}
		if destroy {
			line("destroyed strays", out.DestroyedStrays)
		}
		if retire {
			line("retired missing keys", out.RetiredMissing)
		}
		line("stray device keys", out.StrayKeyIDs)
		line("missing keys", out.MissingKeyIDs)
		return nil
	})
}
