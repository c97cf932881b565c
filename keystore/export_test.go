package keystore

import "testing"

// For the external tests that edit a closed catalog's records, as someone
// with write access to the file could.
var (
	DecodeStoredRecord = decodeRecord
	EncodeStoredRecord = encodeRecord
)

// FillCatalog writes n synthetic records (scale_test.go) into s's catalog.
func FillCatalog(tb testing.TB, s *Store, n int) { fillCatalog(tb, s, n) }
