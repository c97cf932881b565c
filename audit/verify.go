package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Kinds of chain problems reported in ChainError.Kind.
const (
	// KindMalformed: a line is not a valid record (bad JSON, missing or
	// invalid seq/prev, empty line, or an incomplete last line without a
	// trailing newline).
	KindMalformed = "malformed"
	// KindEdited: the record at File:Line was modified (its hash no longer
	// matches the next record's prev, or its seq no longer fits an intact
	// prev link).
	KindEdited = "edited"
	// KindRemoved: records are missing immediately before File:Line (seq
	// jumps forward and the prev link is broken).
	KindRemoved = "removed"
	// KindInserted: the record at File:Line does not belong there (its seq
	// duplicates an earlier or later record and the prev link is broken).
	KindInserted = "inserted"
	// KindReordered: the record at File:Line is out of order (records with
	// smaller seqs follow it).
	KindReordered = "reordered"
	// KindStart: the first record is not the genesis record (use
	// VerifyOptions.AllowNonGenesisStart when verifying a suffix).
	KindStart = "not-genesis"
)

// ChainError describes the first problem found by Verify.
type ChainError struct {
	File    string // file containing the offending line
	Line    int    // 1-based line number in File
	Seq     uint64 // seq of the offending record, if it could be parsed
	Kind    string // one of the Kind constants
	Problem string // human-readable description, starting with Kind
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit: %s:%d (seq %d): %s", e.File, e.Line, e.Seq, e.Problem)
}

// Report summarises a successful verification.
type Report struct {
	Records  int      // number of records verified
	Files    []string // files verified, in order
	FirstSeq uint64   // seq of the first record (0 if there were none)
	LastSeq  uint64   // seq of the last record (0 if there were none)
	LastHash string   // hash of the last record's line (Genesis if none)
	// StartPrev is the first record's prev when it is not Genesis (a
	// pruned log), and PruneChecked says whether a prune record in the log
	// confirmed it.
	StartPrev    string
	PruneChecked bool
}

// VerifyOptions modify verification.
type VerifyOptions struct {
	// AllowNonGenesisStart accepts a first record whose prev is not Genesis
	// (and whose seq is not 1), for verifying only a suffix of the history
	// (for example after old rotated files were archived). The first
	// record's prev is then trusted, not checked.
	AllowNonGenesisStart bool
	// FromRotation verifies a log whose oldest rotated files were removed
	// (Options.Keep, or an operator): the first record may follow records
	// that are gone, but if the log recorded a pruning (an OperationPrune
	// record), the first record must follow exactly the last record that
	// pruning removed.
	FromRotation bool
}

// Verify checks the hash chain of the given files, read in order (oldest
// rotated file first, live file last; see Files). It returns a *ChainError
// for the first chain problem, or another error for I/O failures.
func Verify(paths ...string) (*Report, error) {
	return VerifyWith(VerifyOptions{}, paths...)
}

// lookahead bounds how many records after a problem are read to classify it.
const lookahead = 4096

// VerifyWith is Verify with options.
func VerifyWith(opts VerifyOptions, paths ...string) (*Report, error) {
	if len(paths) == 0 {
		return nil, errors.New("audit: verify: no files given")
	}
	rd := &lineReader{paths: paths}
	defer rd.close()
	rep := &Report{Files: append([]string(nil), paths...), LastHash: Genesis}
	var prev, first *entry // last verified record, first record
	var prune *Record      // the last prune record seen
	for {
		cur, err := rd.next()
		if err == io.EOF {
			if err := checkPrune(opts, rep, first, prune); err != nil {
				return nil, err
			}
			return rep, nil
		}
		if err != nil {
			return nil, err
		}
		if cur.err != nil {
			return nil, cur.chainErr(KindMalformed, cur.err.Error())
		}
		if prev == nil {
			if err := checkStart(opts, cur); err != nil {
				return nil, err
			}
			rep.FirstSeq, first = cur.rec.Seq, cur
			if cur.rec.Prev != Genesis {
				rep.StartPrev = cur.rec.Prev
			}
		} else if cur.rec.Seq != prev.rec.Seq+1 || cur.rec.Prev != prev.hash {
			return nil, classify(rd, prev, cur)
		}
		if cur.rec.Operation == OperationPrune {
			r := cur.rec
			prune = &r
		}
		rep.Records++
		rep.LastSeq = cur.rec.Seq
		rep.LastHash = cur.hash
		prev = cur
	}
}

// checkPrune, for a pruned log, checks that the first record follows the
// last record the latest pruning removed: anything else means records were
// removed beyond what the log itself recorded.
func checkPrune(opts VerifyOptions, rep *Report, first *entry, prune *Record) error {
	if !opts.FromRotation || first == nil || rep.StartPrev == "" || prune == nil {
		return nil
	}
	if prune.PrunedSeq+1 == first.rec.Seq && prune.PrunedHash == first.rec.Prev {
		rep.PruneChecked = true
		return nil
	}
	if prune.PrunedSeq+1 < first.rec.Seq {
		return first.chainErr(KindRemoved, fmt.Sprintf(
			"records removed before this one: the last pruning (seq %d) removed records through seq %d, but seq %d..%d are missing too",
			prune.Seq, prune.PrunedSeq, prune.PrunedSeq+1, first.rec.Seq-1))
	}
	return first.chainErr(KindEdited, fmt.Sprintf(
		"the first record does not follow the last record removed by the pruning at seq %d (seq %d, hash %s)",
		prune.Seq, prune.PrunedSeq, prune.PrunedHash))
}

func checkStart(opts VerifyOptions, cur *entry) error {
	if opts.AllowNonGenesisStart || opts.FromRotation && cur.line == 1 {
		return nil
	}
	switch {
	case cur.rec.Prev == Genesis && cur.rec.Seq == 1:
		return nil
	case cur.rec.Prev == Genesis:
		return cur.chainErr(KindEdited, fmt.Sprintf("genesis record has seq %d, want 1", cur.rec.Seq))
	case cur.rec.Seq == 1:
		return cur.chainErr(KindEdited, "record with seq 1 does not have the genesis prev")
	default:
		return cur.chainErr(KindStart, fmt.Sprintf(
			"first record has seq %d and a non-genesis prev: records before it were removed (if old rotated files were pruned, verify what remains with mlskeyctl audit verify --from-rotation)",
			cur.rec.Seq))
	}
}

// classify explains why cur does not follow prev. prev is the last record of
// an intact chain.
func classify(rd *lineReader, prev, cur *entry) error {
	s := prev.rec.Seq
	linked := cur.rec.Prev == prev.hash
	switch {
	case linked:
		// The prev link is intact, so cur is the true successor but its
		// seq was changed.
		return cur.chainErr(KindEdited, fmt.Sprintf(
			"seq is %d but the record links to seq %d (want seq %d): seq field was changed",
			cur.rec.Seq, s, s+1))
	case cur.rec.Seq == s+1:
		// Seq continues but the link is broken: either prev's content
		// changed (its hash differs) or cur itself was changed (its prev
		// field, or the whole line). In the latter case cur's hash also
		// breaks the link to the following record.
		ahead := rd.peek(1)
		if len(ahead) == 1 && ahead[0].err == nil && ahead[0].rec.Seq == cur.rec.Seq+1 && ahead[0].rec.Prev != cur.hash {
			return cur.chainErr(KindEdited, fmt.Sprintf(
				"record was changed: its prev does not match the hash of seq %d and its own hash does not match the prev of seq %d",
				s, cur.rec.Seq+1))
		}
		return prev.chainErr(KindEdited, fmt.Sprintf(
			"record was changed: its hash %s does not match the prev %s of the next record (seq %d, %s:%d)",
			prev.hash, cur.rec.Prev, cur.rec.Seq, cur.file, cur.line))
	case cur.rec.Seq <= s:
		// Every seq up to s has already been seen in an intact chain, so
		// this record is a duplicate.
		return cur.chainErr(KindInserted, fmt.Sprintf(
			"record with seq %d inserted after seq %d (duplicate seq, prev link broken)", cur.rec.Seq, s))
	default: // cur.rec.Seq > s+1
		var dup, earlier bool
		for _, e := range rd.peek(lookahead) {
			if e.err != nil {
				break
			}
			if e.rec.Seq == cur.rec.Seq {
				dup = true
			}
			if e.rec.Seq > s && e.rec.Seq < cur.rec.Seq {
				earlier = true
			}
		}
		switch {
		case dup:
			return cur.chainErr(KindInserted, fmt.Sprintf(
				"record with seq %d inserted after seq %d (its seq appears again later)", cur.rec.Seq, s))
		case earlier:
			return cur.chainErr(KindReordered, fmt.Sprintf(
				"record with seq %d is out of order: it follows seq %d but seq %d..%d appear after it",
				cur.rec.Seq, s, s+1, cur.rec.Seq-1))
		default:
			missing := fmt.Sprintf("seq %d", s+1)
			if cur.rec.Seq-1 > s+1 {
				missing = fmt.Sprintf("seq %d..%d", s+1, cur.rec.Seq-1)
			}
			where := "before this record"
			if cur.line == 1 && prev.file != cur.file {
				where = fmt.Sprintf("between %s and %s (a whole file may be missing)", prev.file, cur.file)
			}
			return cur.chainErr(KindRemoved, fmt.Sprintf(
				"records removed %s: %s missing (seq jumps from %d to %d)", where, missing, s, cur.rec.Seq))
		}
	}
}

// entry is one line of the log.
type entry struct {
	file string
	line int
	rec  Record
	hash string
	err  error // parse problem, if any
}

func (e *entry) chainErr(kind, detail string) *ChainError {
	return &ChainError{File: e.file, Line: e.line, Seq: e.rec.Seq, Kind: kind, Problem: kind + ": " + detail}
}

// lineReader streams entries over several files, with lookahead.
type lineReader struct {
	paths []string
	idx   int
	f     *os.File
	br    *bufio.Reader
	line  int
	queue []*entry
	ioErr error
}

func (r *lineReader) close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

func (r *lineReader) next() (*entry, error) {
	if len(r.queue) > 0 {
		e := r.queue[0]
		r.queue = r.queue[1:]
		return e, nil
	}
	if r.ioErr != nil {
		return nil, r.ioErr
	}
	return r.read()
}

// peek returns up to n entries after the current one without consuming
// them. It stops early at the end of input or an I/O error.
func (r *lineReader) peek(n int) []*entry {
	for len(r.queue) < n {
		e, err := r.read()
		if err != nil {
			if err != io.EOF {
				r.ioErr = err
			}
			break
		}
		r.queue = append(r.queue, e)
	}
	if len(r.queue) < n {
		return r.queue
	}
	return r.queue[:n]
}

func (r *lineReader) read() (*entry, error) {
	for {
		if r.f == nil {
			if r.idx >= len(r.paths) {
				return nil, io.EOF
			}
			f, err := os.Open(r.paths[r.idx])
			if err != nil {
				return nil, fmt.Errorf("audit: verify: %w", err)
			}
			r.f, r.br, r.line = f, bufio.NewReaderSize(f, 64<<10), 0
		}
		b, err := r.br.ReadBytes('\n')
		if len(b) > 0 {
			r.line++
			e := &entry{file: r.paths[r.idx], line: r.line}
			if b[len(b)-1] != '\n' {
				if err != nil && err != io.EOF {
					return nil, fmt.Errorf("audit: verify: read %s: %w", e.file, err)
				}
				e.err = errors.New("incomplete last line (no trailing newline; interrupted write or truncation)")
				return e, nil
			}
			b = bytes.TrimSuffix(b, []byte{'\n'})
			e.hash = hashLine(b)
			e.rec, e.err = parseLine(b)
			return e, nil
		}
		if err == io.EOF {
			r.f.Close()
			r.f = nil
			r.idx++
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: verify: read %s: %w", r.paths[r.idx], err)
		}
	}
}
