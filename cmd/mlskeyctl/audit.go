package main

import (
	"flag"
	"fmt"

	"github.com/mlskeyd/mlskeyd/audit"
)

func (c *cli) auditVerify(args []string) error {
	var fromRotation bool
	fs := c.newFlagSet("audit verify", "FILE... [flags]", `Verify mlskeyd's audit log offline, without the daemon: every record's
hash chain and sequence. With one FILE (the live log), its rotated files are
found and checked first, oldest first; with several, they are checked in the
order given. Reports the first record that was edited, removed, inserted or
reordered. Compare the last hash with the one mlskeyd logged at shutdown to
detect a truncated log. With --from-rotation, a log whose oldest rotated
files were removed (mlskeyd --audit-keep) is verified from its first
remaining record, which must follow the last record the daemon recorded
removing.`, func(fs *flag.FlagSet) {
		fs.BoolVar(&fromRotation, "from-rotation", false, "the oldest rotated files were removed: start from the first remaining record")
	})
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
	rep, err := audit.VerifyWith(audit.VerifyOptions{FromRotation: fromRotation}, files...)
	if err != nil {
		return err
	}
	if c.g.json {
		out := map[string]any{
			"ok": true, "records": rep.Records, "files": rep.Files,
			"first_seq": rep.FirstSeq, "last_seq": rep.LastSeq, "last_hash": rep.LastHash,
		}
		if rep.StartPrev != "" {
			out["start_prev"], out["prune_checked"] = rep.StartPrev, rep.PruneChecked
		}
		return c.writeJSON(out)
	}
	noun := "files"
	if len(rep.Files) == 1 {
		noun = "file"
	}
	fmt.Fprintf(c.stdout, "ok: %d records in %d %s, seq %d..%d, last hash %s\n",
		rep.Records, len(rep.Files), noun, rep.FirstSeq, rep.LastSeq, rep.LastHash)
	switch {
	case rep.PruneChecked:
		fmt.Fprintf(c.stdout, "starts after pruned records: seq %d follows the last removed record (hash %s), as the log recorded\n", rep.FirstSeq, rep.StartPrev)
	case rep.StartPrev != "":
		fmt.Fprintf(c.stdout, "starts after removed records: seq %d follows hash %s, which no prune record confirms\n", rep.FirstSeq, rep.StartPrev)
	}
	return nil
}
