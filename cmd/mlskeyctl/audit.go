package main

import (
	"fmt"

	"github.com/mlskeyd/mlskeyd/audit"
)

func (c *cli) auditVerify(args []string) error {
	fs := c.newFlagSet("audit verify", "FILE... [flags]", `Verify mlskeyd's audit log offline, without the daemon: every record's
hash chain and sequence. With one FILE (the live log), its rotated files are
found and checked first, oldest first; with several, they are checked in the
order given. Reports the first record that was edited, removed, inserted or
reordered. Compare the last hash with the one mlskeyd logged at shutdown to
detect a truncated log.`, nil)
	files, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usageErrorf("audit verify: name the audit log file")
	}
	if len(files) == 1 {
		if files, err = audit.Files(files[0]); err != nil {
			return err
		}
	}
	rep, err := audit.Verify(files...)
	if err != nil {
		return err
	}
	if c.g.json {
		return c.writeJSON(map[string]any{
			"ok": true, "records": rep.Records, "files": rep.Files,
			"first_seq": rep.FirstSeq, "last_seq": rep.LastSeq, "last_hash": rep.LastHash,
		})
	}
	fmt.Fprintf(c.stdout, "ok: %d records in %d files, seq %d..%d, last hash %s\n",
		rep.Records, len(rep.Files), rep.FirstSeq, rep.LastSeq, rep.LastHash)
	return nil
}
