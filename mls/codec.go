package mls

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// MaxVarint is the largest value a varint (RFC 9420 §2.1.2) can carry:
// the 0b11 prefix is reserved, so four bytes with 30 value bits is the limit.
const MaxVarint = 1<<30 - 1

// AppendVarint appends the minimal-length varint encoding of v. Values above
// MaxVarint cannot be encoded and yield an error wrapping ErrMalformed.
func AppendVarint(b []byte, v uint64) ([]byte, error) {
	switch {
	case v < 1<<6:
		return append(b, byte(v)), nil
	case v < 1<<14:
		return append(b, 0x40|byte(v>>8), byte(v)), nil
	case v <= MaxVarint:
		return append(b, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v)), nil
	}
	return b, fmt.Errorf("%w: length %d does not fit a varint", ErrMalformed, v)
}

// ReadVarint decodes one varint from the start of b and returns its value and
// the number of bytes used. Non-minimal encodings are rejected because the
// RFC requires it: two encodings of the same structure would otherwise hash
// differently.
func ReadVarint(b []byte) (v uint64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("%w: missing varint", ErrMalformed)
	}
	switch b[0] >> 6 {
	case 0:
		return uint64(b[0]), 1, nil
	case 1:
		if len(b) < 2 {
			return 0, 0, fmt.Errorf("%w: truncated 2-byte varint", ErrMalformed)
		}
		v = uint64(binary.BigEndian.Uint16(b) & 0x3fff)
		if v < 1<<6 {
			return 0, 0, fmt.Errorf("%w: non-minimal varint", ErrMalformed)
		}
		return v, 2, nil
	case 2:
		if len(b) < 4 {
			return 0, 0, fmt.Errorf("%w: truncated 4-byte varint", ErrMalformed)
		}
		v = uint64(binary.BigEndian.Uint32(b) & 0x3fffffff)
		if v < 1<<14 {
			return 0, 0, fmt.Errorf("%w: non-minimal varint", ErrMalformed)
		}
		return v, 4, nil
	}
	return 0, 0, fmt.Errorf("%w: varint prefix 0b11 is invalid", ErrMalformed)
}

// Reader decodes the TLS presentation language from a byte slice. It never
// panics: every read is checked against the remaining input.
type Reader struct {
	b []byte
}

// NewReader returns a Reader over b. The Reader does not modify b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Empty reports whether all input has been consumed.
func (r *Reader) Empty() bool { return len(r.b) == 0 }

// Len returns the number of unread bytes.
func (r *Reader) Len() int { return len(r.b) }

// Fixed reads exactly n bytes and returns a copy of them.
func (r *Reader) Fixed(n int) ([]byte, error) {
	if n < 0 || n > len(r.b) {
		return nil, fmt.Errorf("%w: need %d bytes, have %d", ErrMalformed, n, len(r.b))
	}
	out := append([]byte{}, r.b[:n]...)
	r.b = r.b[n:]
	return out, nil
}

func (r *Reader) uint(n int) (uint64, error) {
	if len(r.b) < n {
		return 0, fmt.Errorf("%w: need %d bytes, have %d", ErrMalformed, n, len(r.b))
	}
	var v uint64
	for _, c := range r.b[:n] {
		v = v<<8 | uint64(c)
	}
	r.b = r.b[n:]
	return v, nil
}

// U8 reads a uint8.
func (r *Reader) U8() (uint8, error) { v, err := r.uint(1); return uint8(v), err }

// U16 reads a big-endian uint16.
func (r *Reader) U16() (uint16, error) { v, err := r.uint(2); return uint16(v), err }

// U32 reads a big-endian uint32.
func (r *Reader) U32() (uint32, error) { v, err := r.uint(4); return uint32(v), err }

// U64 reads a big-endian uint64.
func (r *Reader) U64() (uint64, error) { return r.uint(8) }

// Varint reads a minimal-length varint.
func (r *Reader) Varint() (uint64, error) {
	v, n, err := ReadVarint(r.b)
	if err != nil {
		return 0, err
	}
	r.b = r.b[n:]
	return v, nil
}

// Vector reads an opaque<V>: a varint length followed by that many bytes.
// The result is a copy (never nil), so decoded structures do not alias the
// caller's buffer.
func (r *Reader) Vector() ([]byte, error) {
	n, nlen, err := ReadVarint(r.b)
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)-nlen) {
		return nil, fmt.Errorf("%w: vector length %d exceeds remaining %d bytes", ErrMalformed, n, len(r.b)-nlen)
	}
	r.b = r.b[nlen:]
	return r.Fixed(int(n))
}

// Optional reads the presence byte of an optional<T>. Only 0 and 1 are
// valid; anything else would make two encodings mean the same value.
func (r *Reader) Optional() (bool, error) {
	v, err := r.U8()
	if err != nil {
		return false, err
	}
	switch v {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, fmt.Errorf("%w: optional presence byte %d", ErrMalformed, v)
}

// Finish returns an error if input remains; used where the whole input must
// be exactly one structure.
func (r *Reader) Finish() error {
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return nil
}

// Writer encodes the TLS presentation language. Lengths that cannot be
// encoded (vectors of 1 GiB or more) are recorded in Err rather than
// panicking; constructors in this package bound their inputs well below it.
type Writer struct {
	b   []byte
	err error
}

// NewWriter returns an empty Writer.
func NewWriter() *Writer { return &Writer{} }

// U8 appends a uint8.
func (w *Writer) U8(v uint8) { w.b = append(w.b, v) }

// U16 appends a big-endian uint16.
func (w *Writer) U16(v uint16) { w.b = binary.BigEndian.AppendUint16(w.b, v) }

// U32 appends a big-endian uint32.
func (w *Writer) U32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }

// U64 appends a big-endian uint64.
func (w *Writer) U64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }

// Raw appends b without a length prefix.
func (w *Writer) Raw(b []byte) { w.b = append(w.b, b...) }

// Vector appends an opaque<V>.
func (w *Writer) Vector(b []byte) {
	out, err := AppendVarint(w.b, uint64(len(b)))
	if err != nil {
		if w.err == nil {
			w.err = err
		}
		return
	}
	w.b = append(out, b...)
}

// Optional appends the presence byte of an optional<T>.
func (w *Writer) Optional(present bool) {
	if present {
		w.U8(1)
	} else {
		w.U8(0)
	}
}

// Bytes returns the encoding so far.
func (w *Writer) Bytes() []byte { return w.b }

// Err returns the first encoding error, if any.
func (w *Writer) Err() error { return w.err }

// decoder wraps a Reader with a sticky error so that struct decoders read
// like the RFC's struct definitions; the first failure is kept, prefixed
// with the field name.
type decoder struct {
	r   *Reader
	err error
}

func newDecoder(b []byte) *decoder { return &decoder{r: NewReader(b)} }

func (d *decoder) fail(field string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %w", field, err)
	}
}

func (d *decoder) failf(field, format string, args ...any) {
	d.fail(field, fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...))
}

func (d *decoder) u8(field string) uint8 {
	if d.err != nil {
		return 0
	}
	v, err := d.r.U8()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

func (d *decoder) u16(field string) uint16 {
	if d.err != nil {
		return 0
	}
	v, err := d.r.U16()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

func (d *decoder) u32(field string) uint32 {
	if d.err != nil {
		return 0
	}
	v, err := d.r.U32()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

func (d *decoder) u64(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, err := d.r.U64()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

func (d *decoder) vec(field string) []byte {
	if d.err != nil {
		return nil
	}
	v, err := d.r.Vector()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

func (d *decoder) optional(field string) bool {
	if d.err != nil {
		return false
	}
	v, err := d.r.Optional()
	if err != nil {
		d.fail(field, err)
	}
	return v
}

// list decodes a vector whose content is a sequence of structures, at most
// max of them (see limits.go): each element consumes at least one byte, but
// a byte per element still allows millions of them.
func (d *decoder) list(field string, max int, each func(*decoder)) {
	b := d.vecView(field)
	if d.err != nil {
		return
	}
	sub := newDecoder(b)
	for n := 0; sub.err == nil && !sub.r.Empty(); n++ {
		if n == max {
			d.failf(field, "more than %d entries", max)
			return
		}
		each(sub)
	}
	if sub.err != nil {
		d.fail(field, sub.err)
	}
}

// vecView is vec without the copy, for vectors that are decoded further
// and never kept.
func (d *decoder) vecView(field string) []byte {
	if d.err != nil {
		return nil
	}
	n, nlen, err := ReadVarint(d.r.b)
	if err == nil && n > uint64(len(d.r.b)-nlen) {
		err = fmt.Errorf("%w: vector length %d exceeds remaining %d bytes", ErrMalformed, n, len(d.r.b)-nlen)
	}
	if err != nil {
		d.fail(field, err)
		return nil
	}
	v := d.r.b[nlen : nlen+int(n)]
	d.r.b = d.r.b[nlen+int(n):]
	return v
}

// sizedVec reads an opaque<V> that must be exactly size bytes (any size
// when size is negative).
func (d *decoder) sizedVec(field string, size int) []byte {
	v := d.vec(field)
	if d.err == nil && size >= 0 && len(v) != size {
		d.failf(field, "%d bytes, want %d", len(v), size)
		return nil
	}
	return v
}

func (d *decoder) u16list(field string, max int) []uint16 {
	b := d.vecView(field)
	if d.err != nil {
		return nil
	}
	if len(b)%2 != 0 {
		d.failf(field, "uint16 vector of odd length %d", len(b))
		return nil
	}
	if len(b)/2 > max {
		d.failf(field, "%d entries, more than %d", len(b)/2, max)
		return nil
	}
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.BigEndian.Uint16(b[2*i:])
	}
	return out
}

// finish is used by the top-level Unmarshal functions: the input must be
// exactly one structure.
func (d *decoder) finish(what string) error {
	if d.err == nil {
		if err := d.r.Finish(); err != nil {
			d.fail(what, err)
		}
	}
	if d.err != nil {
		return &decodeError{err: d.err}
	}
	return nil
}

// decodeError names the field that failed and its cause with one "mls:"
// prefix: the sentinel errors carry their own for callers that print them
// alone, and repeating it inside one line reads as two failures.
type decodeError struct{ err error }

func (e *decodeError) Error() string {
	return "mls: decode " + strings.ReplaceAll(e.err.Error(), "mls: ", "")
}

func (e *decodeError) Unwrap() error { return e.err }

func writeU16List(w *Writer, v []uint16) {
	sub := NewWriter()
	for _, x := range v {
		sub.U16(x)
	}
	w.VectorFrom(sub)
}

// VectorFrom appends the content of sub as an opaque<V>, carrying over any
// encoding error recorded in sub.
func (w *Writer) VectorFrom(sub *Writer) {
	if sub.err != nil && w.err == nil {
		w.err = sub.err
	}
	w.Vector(sub.b)
}
