package keystore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A record is stored in one of two forms, told apart by its first byte:
//
//	'{'   JSON, as every catalog before schema 2 wrote it. Still read, so
//	      that old catalogs and restored backups work; a record is
//	      rewritten in the binary form the next time it is written.
//	0x01  binary, version 1 (below). JSON never starts with a control
//	      byte, so the two cannot be confused.
//
// Binary version 1, after the version byte, in this order (uvarint:
// encoding/binary's; bytes and strings: uvarint length, then the bytes):
//
//	flags        uvarint: 1 last resort, 2 not_after set, 4 retired_at set,
//	             8 created_at set; no other bit may be set
//	role         enum
//	suite        uvarint, at most 0xffff
//	algorithm    enum
//	protection   enum
//	state        enum
//	public_key, device_ref, sealed                bytes
//	epoch, owner                                  string
//	key_package_ref                               bytes
//	signature_key_id, identity                    string
//	created_at, not_after, retired_at             time, each only if its flag is set
//	retired_why                                   string
//	revocation                                    bytes
//
// The id is the record's bbolt key and is not repeated in the value. An
// enum is one byte: n > 0 is the n-th name of the field's table below, 0
// is followed by the name as a string (a name this version does not
// know). A time is a zigzag varint of Unix seconds and a uvarint of
// nanoseconds below 1e9; it is read back in UTC (JSON kept the writer's
// offset; the instant is the same). Nothing may follow the last field.
//
// The tables and the field order are the format: a new name is appended
// to its table, and a new field or any other change takes a new version
// byte, with the decoder of version 1 kept.
const recordBinaryV1 = 0x01

const (
	flagLastResort = 1 << iota
	flagNotAfter
	flagRetiredAt
	flagCreatedAt
	flagsKnown = flagLastResort | flagNotAfter | flagRetiredAt | flagCreatedAt
)

var (
	roleNames       = []string{string(RoleSignature), string(RoleInit), string(RoleLeafEncryption)}
	stateNames      = []string{string(StateActive), string(StateConsumed), string(StateDestroyed), string(StateMissing)}
	protectionNames = []string{string(ProtectionHardware), string(ProtectionWrapped), string(ProtectionSealed)}
	algorithmNames  = []string{string(Ed25519), string(Ed448), string(ECDSAP256), string(ECDSAP384), string(ECDSAP521),
		string(X25519), string(X448), string(ECDHP256), string(ECDHP384), string(ECDHP521)}
)

// encodeRecord returns r in the binary form.
func encodeRecord(r *Record) []byte {
	n := 64 + len(r.PublicKey) + len(r.DeviceRef) + len(r.Sealed) + len(r.Epoch) + len(r.Owner) +
		len(r.KeyPackageRef) + len(r.SignatureKeyID) + len(r.Identity) + len(r.RetiredWhy) + len(r.Revocation)
	v := make([]byte, 0, n)
	v = append(v, recordBinaryV1)
	var flags uint64
	if r.LastResort {
		flags |= flagLastResort
	}
	if !r.NotAfter.IsZero() {
		flags |= flagNotAfter
	}
	if !r.RetiredAt.IsZero() {
		flags |= flagRetiredAt
	}
	if !r.CreatedAt.IsZero() {
		flags |= flagCreatedAt
	}
	v = binary.AppendUvarint(v, flags)
	v = appendEnum(v, roleNames, string(r.Role))
	v = binary.AppendUvarint(v, uint64(r.Suite))
	v = appendEnum(v, algorithmNames, string(r.Algorithm))
	v = appendEnum(v, protectionNames, string(r.Protection))
	v = appendEnum(v, stateNames, string(r.State))
	for _, b := range [][]byte{r.PublicKey, r.DeviceRef, r.Sealed, []byte(r.Epoch), []byte(r.Owner),
		r.KeyPackageRef, []byte(r.SignatureKeyID), []byte(r.Identity)} {
		v = appendBytes(v, b)
	}
	for _, t := range []time.Time{r.CreatedAt, r.NotAfter, r.RetiredAt} {
		if !t.IsZero() {
			v = binary.AppendVarint(v, t.Unix())
			v = binary.AppendUvarint(v, uint64(t.Nanosecond()))
		}
	}
	v = appendBytes(v, []byte(r.RetiredWhy))
	return appendBytes(v, r.Revocation)
}

func appendBytes(v, b []byte) []byte {
	return append(binary.AppendUvarint(v, uint64(len(b))), b...)
}

func appendEnum(v []byte, names []string, s string) []byte {
	for i, n := range names {
		if n == s {
			return append(v, byte(i+1))
		}
	}
	return appendBytes(append(v, 0), []byte(s))
}

// decodeRecord reads a stored record, in either form; id is its bbolt key.
// Any damage is an error naming the record, never a panic.
func decodeRecord(id, v []byte) (*Record, error) {
	var r Record
	var err error
	switch {
	case len(v) == 0:
		err = errors.New("empty value")
	case v[0] == '{':
		err = json.Unmarshal(v, &r)
	case v[0] == recordBinaryV1:
		err = decodeBinaryV1(&r, v[1:])
		r.ID = string(id)
	default:
		err = fmt.Errorf("unknown record format 0x%02x (written by a newer mlskeyd?)", v[0])
	}
	if err != nil {
		return nil, fmt.Errorf("catalog record %q is corrupt: %w", id, err)
	}
	return &r, nil
}

// recordReader reads fields from a binary record; the first error sticks
// and names the field.
type recordReader struct {
	v   []byte
	err error
}

func (d *recordReader) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %s", field, why)
	}
}

func (d *recordReader) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.v)
	if n <= 0 {
		d.fail(field, "truncated or overlong number")
		return 0
	}
	d.v = d.v[n:]
	return x
}

func (d *recordReader) bytes(field string) []byte {
	n := d.uvarint(field)
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.v)) {
		d.fail(field, fmt.Sprintf("length %d past the end of the record", n))
		return nil
	}
	if n == 0 {
		return nil
	}
	b := make([]byte, n)
	copy(b, d.v)
	d.v = d.v[n:]
	return b
}

func (d *recordReader) enum(field string, names []string) string {
	if d.err != nil {
		return ""
	}
	if len(d.v) == 0 {
		d.fail(field, "truncated")
		return ""
	}
	c := int(d.v[0])
	d.v = d.v[1:]
	if c == 0 {
		return string(d.bytes(field))
	}
	if c > len(names) {
		d.fail(field, fmt.Sprintf("unknown code %d", c))
		return ""
	}
	return names[c-1]
}

func (d *recordReader) time(field string) time.Time {
	if d.err != nil {
		return time.Time{}
	}
	s, n := binary.Varint(d.v)
	if n <= 0 {
		d.fail(field, "truncated or overlong number")
		return time.Time{}
	}
	d.v = d.v[n:]
	ns := d.uvarint(field)
	if d.err == nil && ns >= 1e9 {
		d.fail(field, fmt.Sprintf("%d nanoseconds", ns))
	}
	return time.Unix(s, int64(ns)).UTC()
}

func decodeBinaryV1(r *Record, v []byte) error {
	d := &recordReader{v: v}
	flags := d.uvarint("flags")
	if d.err == nil && flags&^flagsKnown != 0 {
		d.fail("flags", fmt.Sprintf("unknown bits 0x%x", flags&^flagsKnown))
	}
	r.LastResort = flags&flagLastResort != 0
	r.Role = Role(d.enum("role", roleNames))
	suite := d.uvarint("suite")
	if d.err == nil && suite > 0xffff {
		d.fail("suite", fmt.Sprintf("%d out of range", suite))
	}
	r.Suite = uint16(suite)
	r.Algorithm = Algorithm(d.enum("algorithm", algorithmNames))
	r.Protection = Protection(d.enum("protection", protectionNames))
	r.State = State(d.enum("state", stateNames))
	r.PublicKey = d.bytes("public_key")
	r.DeviceRef = d.bytes("device_ref")
	r.Sealed = d.bytes("sealed")
	r.Epoch = string(d.bytes("epoch"))
	r.Owner = string(d.bytes("owner"))
	r.KeyPackageRef = d.bytes("key_package_ref")
	r.SignatureKeyID = string(d.bytes("signature_key_id"))
	r.Identity = string(d.bytes("identity"))
	if flags&flagCreatedAt != 0 {
		r.CreatedAt = d.time("created_at")
	}
	if flags&flagNotAfter != 0 {
		r.NotAfter = d.time("not_after")
	}
	if flags&flagRetiredAt != 0 {
		r.RetiredAt = d.time("retired_at")
	}
	r.RetiredWhy = string(d.bytes("retired_why"))
	r.Revocation = d.bytes("revocation")
	if d.err == nil && len(d.v) > 0 {
		d.fail("record", fmt.Sprintf("%d bytes after the last field", len(d.v)))
	}
	if d.err != nil {
		return fmt.Errorf("binary record: %w", d.err)
	}
	return nil
}
