package audit

import (
	"encoding/json"
	"strconv"
)

// appendRecord appends r as encoding/json would marshal it, byte for byte
// (the chain hashes these bytes, and Verify re-reads them with
// encoding/json), without reflection: the per-call record was a
// noticeable part of a signature's CPU through the daemon. Strings that
// need escaping go through encoding/json itself; TestAppendRecordMatchesJSON
// holds the two encoders together.
func appendRecord(b []byte, r *Record) ([]byte, error) {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"time":"`...)
	b, err := r.Time.AppendText(b)
	if err != nil {
		// What encoding/json would report for the same time.
		if _, jerr := json.Marshal(r.Time); jerr != nil {
			err = jerr
		}
		return nil, err
	}
	b = append(b, `","uid":`...)
	b = strconv.AppendUint(b, uint64(r.UID), 10)
	b = append(b, `,"gid":`...)
	b = strconv.AppendUint(b, uint64(r.GID), 10)
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(r.PID), 10)
	b = append(b, `,"exe":`...)
	b = appendString(b, r.Exe)
	b = append(b, `,"operation":`...)
	b = appendString(b, r.Operation)
	b = append(b, `,"key_id":`...)
	b = appendString(b, r.KeyID)
	if len(r.KeyIDs) > 0 {
		b = append(b, `,"key_ids":[`...)
		for i, id := range r.KeyIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, id)
		}
		b = append(b, ']')
	}
	if r.Label != "" {
		b = append(b, `,"label":`...)
		b = appendString(b, r.Label)
	}
	b = append(b, `,"outcome":`...)
	b = appendString(b, r.Outcome)
	b = append(b, `,"code":`...)
	b = appendString(b, r.Code)
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, r.Reason)
	}
	if r.PrunedSeq != 0 {
		b = append(b, `,"pruned_seq":`...)
		b = strconv.AppendUint(b, r.PrunedSeq, 10)
	}
	if r.PrunedHash != "" {
		b = append(b, `,"pruned_hash":`...)
		b = appendString(b, r.PrunedHash)
	}
	b = append(b, `,"prev":`...)
	b = appendString(b, r.Prev)
	return append(b, '}'), nil
}

// appendString appends s as a JSON string. Printable ASCII that
// encoding/json leaves alone (everything but the quote, the backslash and
// its HTML escapes <, > and &) is copied; anything else, rare in a record,
// is left to encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
