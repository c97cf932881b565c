package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mlskeyd/mlskeyd/mls"
)

// parseSuite parses a cipher suite given as a decimal number ("1"), a hex
// number ("0x0001") or an RFC 9420 name (case-insensitive). Any 16-bit
// number is passed on, so a daemon that supports suites this client does not
// know can still be used; the daemon answers for unsupported ones.
func parseSuite(s string) (uint32, error) {
	if id, err := mls.ParseSuite(s); err == nil {
		return uint32(id), nil
	}
	t := strings.ToLower(strings.TrimSpace(s))
	var n uint64
	var err error
	if h, ok := strings.CutPrefix(t, "0x"); ok {
		n, err = strconv.ParseUint(h, 16, 16)
	} else {
		n, err = strconv.ParseUint(t, 10, 16)
	}
	if err != nil || n == 0 {
		return 0, fmt.Errorf("unknown cipher suite %q (want a number like 1 or 0x0001, or a name like %s)", s, mls.CipherSuite(1))
	}
	return uint32(n), nil
}

// suiteName returns the RFC 9420 name of a cipher suite, or "" if unknown.
func suiteName(id uint32) string {
	if s, err := mls.LookupSuite(mls.CipherSuite(id)); err == nil && id <= 0xffff {
		return s.Name
	}
	return ""
}
