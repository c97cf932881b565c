// Package audit implements mlskeyd's tamper-evident, append-only audit log.
//
// # Format
//
// A log is a sequence of UTF-8 text files of JSON lines. Each line is one
// Record serialised as a single JSON object followed by "\n":
//
//	{"seq":1,"time":"2026-01-02T15:04:05.123456789Z","uid":1000,"gid":1000,"pid":4242,"exe":"/usr/bin/chat","operation":"SignWithLabel","key_id":"k1","label":"MLS 1.0 LeafNodeTBS","outcome":"ok","code":"OK","prev":"0000…0000"}
//
// Records describe who (peer uid/gid/pid and executable, from SO_PEERCRED)
// asked for which operation on which key(s), and the outcome. They never
// contain secrets or content: no key material, plaintext, ciphertext,
// signatures or PINs. Callers must keep Record.Reason short and must not
// put such data (or error strings that may embed it) into it.
//
// Each record is written with a single write(2) on a file opened with
// O_APPEND and, by default, fsynced before Append returns (Options.Sync).
// If the write or fsync fails, Append returns an error, the partial line is
// truncated away (best effort; retried before the next write) and the chain
// state does not advance, so a later successful Append still extends a
// valid chain. A daemon configured with audit.fail_closed refuses the
// audited operation when Append fails.
//
// # Chain
//
// Records carry a sequence number, Seq, starting at 1 and increasing by
// exactly one, and Prev, the hex SHA-256 of the previous record's line
// (the exact bytes, without the newline). The first record of a log has
// Prev = Genesis (64 zeros). Because each line's hash is embedded in its
// successor, modifying any byte of a record breaks the link to the next
// one.
//
// When an existing log is opened, the last line is read to continue Seq and
// Prev. If that line does not parse (for example after a crash in the
// middle of a write), Open fails with ErrCorruptTail rather than silently
// starting a new chain; an operator must inspect the file (Verify reports
// the exact line) and repair it.
//
// # Rotation
//
// Log.Rotate, or an Append that would grow the live file beyond
// Options.MaxSize, renames the live file to
// path + "." + UTC time in the fixed-width form 20060102T150405.000000000Z,
// so sorting rotated names lexically sorts them chronologically (a name is
// always chosen to sort after the previous rotated file, even if the clock
// stepped back). A new live file is created with mode 0600; rotated files
// keep that mode. The chain continues across files: the first record of the
// new file has as Prev the hash of the last line of the rotated file, and
// Seq continues. Files(path) lists the rotated files and the live file in
// chronological order. Deleting old rotated files (retention) is left to
// the operator; verify the remaining suffix with
// VerifyOptions.AllowNonGenesisStart.
//
// # Verification
//
// Verify (and VerifyWith) re-reads the files oldest first and checks that
// every line is a valid record, that Seq increases by exactly one across
// all files, and that every Prev equals the hash of the preceding line (the
// first record must be the genesis record unless AllowNonGenesisStart is
// set). The first problem is reported as a *ChainError naming the file,
// the line and the kind of tampering:
//
//   - edited: a record's content changed, so its hash no longer matches the
//     next record's prev while Seq is consecutive (the changed record is
//     the one named), or its Seq changed while its prev link is intact;
//   - removed: Seq jumps forward with a broken link — records are missing
//     before the named line (at a file boundary: a whole file may be gone);
//   - inserted: a record whose Seq duplicates an earlier (or later) one;
//   - reordered: Seq jumps forward but the skipped records appear later;
//   - malformed: a line that is not a valid record, including an incomplete
//     last line;
//   - not-genesis: the history does not start at the genesis record.
//
// What verification proves: given an intact first record (or a trusted
// starting point), any edit, removal, insertion or reordering of records
// before the last one is detected. It cannot detect truncation of the tail:
// removing the last records (or the newest files) leaves a valid, shorter
// chain, and the last record itself can be rewritten undetected. Tail
// truncation is detectable only by comparing the final Seq and hash
// (Report.LastSeq, Report.LastHash) with a copy kept elsewhere. The daemon
// therefore logs Log.LastSeq and Log.LastHash to its system log at start
// and at shutdown; shipping those (or the audit lines themselves) to a
// remote log collector makes the tail checkable. Likewise the chain is not
// signed or keyed: someone able to rewrite the whole file can recompute a
// consistent chain, which only an external copy of a later hash reveals.
package audit
