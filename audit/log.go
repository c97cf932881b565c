package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// SyncMode selects whether Append fsyncs the file after each record.
type SyncMode int

const (
	// SyncAlways fsyncs after every record (the default, zero value).
	SyncAlways SyncMode = iota
	// SyncNever leaves flushing to the kernel. Records may be lost on a
	// crash or power failure; use only for tests or when the log lives on a
	// medium where durability is handled elsewhere.
	SyncNever
)

// Options configure a Log.
type Options struct {
	// Sync controls fsync after each Append; the zero value is SyncAlways.
	Sync SyncMode
	// MaxSize rotates the live file before an Append that would make it
	// exceed MaxSize bytes. 0 means never rotate automatically. A single
	// record larger than MaxSize is still written (to a fresh file).
	MaxSize int64
	// Keep, if positive, is how many rotated files are kept: a rotation
	// removes the oldest ones beyond it, and the new live file starts with
	// a prune record (OperationPrune) naming the seq and hash of the last
	// record removed, so that VerifyOptions.FromRotation can check that
	// what remains starts exactly where the removed files ended.
	Keep int
	// OnError, if set, is called with errors that do not fail an Append,
	// i.e. a failed automatic rotation (the record is then written to the
	// current file instead). It is called with the Log's mutex held and must
	// not call back into the Log.
	OnError func(error)
}

// ErrClosed is returned by operations on a closed Log.
var ErrClosed = errors.New("audit: log is closed")

// ErrCorruptTail is wrapped by the error Open returns when the last line of
// an existing log file cannot be parsed (for example after an interrupted
// write). Open refuses to start a new chain in that case; an operator must
// inspect and repair the file (see Verify).
var ErrCorruptTail = errors.New("audit: corrupt log tail")

// rotatedLayout is the time layout of rotated file suffixes. It is fixed
// width, so lexical order of names equals chronological order.
const rotatedLayout = "20060102T150405.000000000Z"

// file is the subset of *os.File used for writing; a seam for tests.
type file interface {
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// openFile opens the live file for appending; replaced in tests.
var openFile = func(name string, flag int, perm os.FileMode) (file, error) {
	return os.OpenFile(name, flag, perm)
}

// Log is an append-only, hash-chained audit log. It is safe for concurrent
// use. Only one Log (one process) may write a given path at a time.
type Log struct {
	mu   sync.Mutex
	path string
	opts Options
	now  func() time.Time

	f       file  // nil when closed or after a failed reopen
	size    int64 // size of the live file up to the last complete record
	dirty   bool  // a failed write may have left bytes beyond size
	seq     uint64
	prev    string // hash of the last record's line
	lastRot string // newest rotated file name (base name), "" if none
	closed  bool
	buf     []byte // encoding buffer, reused between records
}

// Open opens (creating with mode 0600 if needed) the live audit log at path
// and continues the hash chain from its last record. If the live file is
// empty or missing, the chain continues from the last record of the newest
// rotated file (path.<timestamp>), or starts at Genesis when there is none.
// If the last line of the file it continues from does not parse, Open fails
// with an error wrapping ErrCorruptTail.
func Open(path string, opts Options) (*Log, error) {
	if opts.MaxSize < 0 || opts.Keep < 0 {
		return nil, fmt.Errorf("audit: negative MaxSize %d or Keep %d", opts.MaxSize, opts.Keep)
	}
	l := &Log{path: path, opts: opts, now: time.Now, prev: Genesis}
	rotated, err := rotatedFiles(path)
	if err != nil {
		return nil, err
	}
	if len(rotated) > 0 {
		l.lastRot = filepath.Base(rotated[len(rotated)-1])
	}

	// Determine the chain state.
	size, err := fileSize(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	src := path
	if size == 0 && len(rotated) > 0 {
		src = rotated[len(rotated)-1]
	}
	if err := l.loadTail(src); err != nil {
		return nil, err
	}
	if err := l.openLive(); err != nil {
		return nil, err
	}
	return l, nil
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, nil // e.g. a device; nothing to continue from
	}
	return fi.Size(), nil
}

// loadTail sets seq and prev from the last line of path (if non-empty).
func (l *Log) loadTail(path string) error {
	line, err := readLastLine(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if line == nil {
		return nil
	}
	r, err := parseLine(line)
	if err != nil {
		return fmt.Errorf("%w: %s: last line: %v", ErrCorruptTail, path, err)
	}
	l.seq = r.Seq
	l.prev = hashLine(line)
	return nil
}

// readLastLine returns the last complete line of a regular file without its
// newline, or nil if the file is empty. A non-empty file that does not end in
// a newline is reported as ErrCorruptTail.
func readLastLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, nil
	}
	size := fi.Size()
	var tail []byte
	const chunk = 64 << 10
	off := size
	for {
		n := int64(chunk)
		if n > off {
			n = off
		}
		off -= n
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("audit: read %s: %w", path, err)
		}
		tail = append(buf, tail...)
		if len(tail) > 0 && tail[len(tail)-1] != '\n' {
			return nil, fmt.Errorf("%w: %s: last line is incomplete (no trailing newline; interrupted write?)", ErrCorruptTail, path)
		}
		body := tail[:len(tail)-1]
		if i := bytes.LastIndexByte(body, '\n'); i >= 0 {
			return body[i+1:], nil
		}
		if off == 0 {
			return body, nil
		}
	}
}

func (l *Log) openLive() error {
	_, statErr := os.Lstat(l.path)
	f, err := openFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open %s: %w", l.path, err)
	}
	size, err := fileSize(l.path)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	l.f, l.size, l.dirty = f, size, false
	if errors.Is(statErr, os.ErrNotExist) && l.opts.Sync == SyncAlways {
		syncDir(filepath.Dir(l.path))
	}
	return nil
}

// syncDir fsyncs a directory so renames and creations are durable (best
// effort).
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

// Append assigns r.Seq and r.Prev (overwriting any caller values), sets
// r.Time to the current UTC time if it is zero, and writes the record as one
// JSON line with a single write, followed by fsync unless Options.Sync is
// SyncNever. On any error the record is not part of the chain: Seq and the
// last hash are not advanced and a partially written line is truncated away
// (best effort; if that fails, later Appends retry it and fail until it
// succeeds). Callers running fail-closed must refuse the audited operation
// when Append returns an error.
func (l *Log) Append(r Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.f == nil {
		// A previous rotation could not create the new live file.
		if err := l.openLive(); err != nil {
			return err
		}
	}
	if l.dirty {
		if err := l.repair(); err != nil {
			return err
		}
	}

	if r.Time.IsZero() {
		r.Time = l.now().UTC()
	}
	line, hash, err := l.encode(r)
	if err != nil {
		return err
	}
	if l.opts.MaxSize > 0 && l.size > 0 && l.size+int64(len(line)) > l.opts.MaxSize {
		if err := l.rotateLocked(); err != nil {
			if l.opts.OnError != nil {
				l.opts.OnError(fmt.Errorf("audit: automatic rotation: %w", err))
			}
			if l.f == nil {
				if err := l.openLive(); err != nil {
					return err
				}
			}
		}
		// The rotation may have written a prune record: the chain moved.
		if line, hash, err = l.encode(r); err != nil {
			return err
		}
	}
	return l.writeLine(line, hash)
}

// encode assigns r's Seq and Prev and returns its line (with newline) and
// hash. The line is l's buffer, valid until the next encode.
func (l *Log) encode(r Record) ([]byte, string, error) {
	r.Seq = l.seq + 1
	r.Prev = l.prev
	line, err := appendRecord(l.buf[:0], &r)
	if err != nil {
		return nil, "", fmt.Errorf("audit: encode record: %w", err)
	}
	hash := hashLine(line)
	line = append(line, '\n')
	if cap(line) <= maxKeptBuffer {
		l.buf = line
	}
	return line, hash, nil
}

// maxKeptBuffer bounds the encoding buffer a Log keeps between records.
const maxKeptBuffer = 64 << 10

// writeLocked appends one record to the live file.
func (l *Log) writeLocked(r Record) error {
	if r.Time.IsZero() {
		r.Time = l.now().UTC()
	}
	line, hash, err := l.encode(r)
	if err != nil {
		return err
	}
	return l.writeLine(line, hash)
}

// writeLine appends one encoded record (line, with its newline, and the
// hash of line without it) to the live file.
func (l *Log) writeLine(line []byte, hash string) error {
	n, err := l.f.Write(line)
	if err == nil && n != len(line) {
		err = io.ErrShortWrite
	}
	if err == nil && l.opts.Sync == SyncAlways {
		if serr := l.f.Sync(); serr != nil {
			err = fmt.Errorf("fsync: %w", serr)
		}
	}
	if err != nil {
		l.dirty = true
		_ = l.repair() // best effort; retried by the next Append
		return fmt.Errorf("audit: append to %s: %w", l.path, err)
	}
	l.size += int64(len(line))
	l.seq++
	l.prev = hash
	return nil
}

// repair truncates the live file back to the last complete record.
func (l *Log) repair() error {
	if err := l.f.Truncate(l.size); err != nil {
		return fmt.Errorf("audit: %s may contain a partial record and could not be truncated: %w", l.path, err)
	}
	if l.opts.Sync == SyncAlways {
		_ = l.f.Sync()
	}
	l.dirty = false
	return nil
}

// Rotate renames the live file to path.<UTC timestamp> (for example
// audit.log.20260102T150405.000000000Z) and starts a new, empty live file.
// The chain continues: the first record of the new file has as Prev the hash
// of the last record of the rotated one. Rotating an empty live file is a
// no-op.
func (l *Log) Rotate() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.f == nil {
		if err := l.openLive(); err != nil {
			return err
		}
	}
	return l.rotateLocked()
}

func (l *Log) rotateLocked() error {
	if l.dirty {
		if err := l.repair(); err != nil {
			return err
		}
	}
	if l.size == 0 {
		return nil
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: rotate: fsync %s: %w", l.path, err)
	}
	name, err := l.rotatedName()
	if err != nil {
		return err
	}
	if err := os.Rename(l.path, name); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.lastRot = filepath.Base(name)
	_ = l.f.Close()
	l.f = nil
	if err := l.openLive(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	syncDir(filepath.Dir(l.path))
	return l.pruneLocked()
}

// pruneLocked removes the oldest rotated files beyond Options.Keep and
// records what it removed as the first record of the (new) live file.
func (l *Log) pruneLocked() error {
	if l.opts.Keep <= 0 {
		return nil
	}
	rotated, err := rotatedFiles(l.path)
	if err != nil || len(rotated) <= l.opts.Keep {
		return err
	}
	old := rotated[:len(rotated)-l.opts.Keep]
	newest := old[len(old)-1]
	line, err := readLastLine(newest)
	if err != nil {
		return fmt.Errorf("audit: prune: %w", err)
	}
	last, err := parseLine(line)
	if err != nil {
		return fmt.Errorf("audit: prune: %s: last line: %v", newest, err)
	}
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return fmt.Errorf("audit: prune: %w", err)
		}
	}
	syncDir(filepath.Dir(l.path))
	return l.writeLocked(Record{
		Operation:  OperationPrune,
		Outcome:    OutcomeOK,
		Reason:     fmt.Sprintf("removed %d rotated files through %s (audit keep %d)", len(old), filepath.Base(newest), l.opts.Keep),
		PrunedSeq:  last.Seq,
		PrunedHash: hashLine(line),
	})
}

// rotatedName picks a name for the rotated file that sorts after every
// existing rotated file, even if the clock went backwards.
func (l *Log) rotatedName() (string, error) {
	t := l.now().UTC()
	if l.lastRot != "" {
		last, err := time.Parse(rotatedLayout, strings.TrimPrefix(l.lastRot, filepath.Base(l.path)+"."))
		if err == nil && !t.After(last) {
			t = last.Add(time.Nanosecond)
		}
	}
	for range 1000 {
		name := l.path + "." + t.Format(rotatedLayout)
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			return name, nil
		}
		t = t.Add(time.Nanosecond)
	}
	return "", errors.New("audit: rotate: cannot find a free rotated file name")
}

// LastHash returns the hash of the last record written (Genesis if none).
// The daemon logs it (with LastSeq) at start and shutdown so that truncation
// of the log tail can be detected by comparing with that copy.
func (l *Log) LastHash() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prev
}

// LastSeq returns the Seq of the last record written (0 if none).
func (l *Log) LastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// Path returns the live file path.
func (l *Log) Path() string { return l.path }

// Close syncs and closes the live file. Further Appends return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.f == nil {
		return nil
	}
	var err error
	if l.dirty {
		err = l.repair()
	}
	if serr := l.f.Sync(); serr != nil && err == nil && l.opts.Sync == SyncAlways {
		err = serr
	}
	if cerr := l.f.Close(); cerr != nil && err == nil {
		err = cerr
	}
	l.f = nil
	if err != nil {
		return fmt.Errorf("audit: close %s: %w", l.path, err)
	}
	return nil
}

// Files returns the rotated files of the live log at path followed by path
// itself (if it exists), oldest first — the order Verify expects.
func Files(path string) ([]string, error) {
	files, err := rotatedFiles(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err == nil {
		files = append(files, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("audit: no log files for %s: %w", path, os.ErrNotExist)
	}
	return files, nil
}

// rotatedFiles lists path.<timestamp> files, oldest first.
func rotatedFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("audit: %w", err)
	}
	prefix := base + "."
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || !e.Type().IsRegular() {
			continue
		}
		suffix := name[len(prefix):]
		t, err := time.Parse(rotatedLayout, suffix)
		if err != nil || t.Format(rotatedLayout) != suffix {
			continue
		}
		out = append(out, filepath.Join(filepath.Dir(path), name))
	}
	sort.Strings(out)
	return out, nil
}
