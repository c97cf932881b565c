package main

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/mlskeyd/mlskeyd/mls"
)

// TestSampleFramedContent: the sample is a FramedContentTBS that strict
// content mode's parser accepts, for the key's suite.
func TestSampleFramedContent(t *testing.T) {
	_, sock := startFake(t)
	check := func(b []byte, suite mls.CipherSuite) {
		t.Helper()
		tbs, err := mls.ParseFramedContentTBS(b)
		if err != nil {
			t.Fatalf("sample does not parse: %v", err)
		}
		if tbs.Context == nil || tbs.Context.CipherSuite != suite || string(tbs.Content.ApplicationData) == "" {
			t.Fatalf("sample for suite %v: %+v", suite, tbs)
		}
	}
	check([]byte(mustRun(t, sock, "", "sample", "framed-content", "--key", "sig-1")), 1)

	var j struct{ Label, Content string }
	if err := json.Unmarshal([]byte(mustRun(t, sock, "", "sample", "framed-content", "--suite", "7", "--json")), &j); err != nil || j.Label != "FramedContentTBS" {
		t.Fatalf("--json: %v %+v", err, j)
	}
	b, _ := hex.DecodeString(j.Content)
	check(b, 7)

	// --suite needs no daemon.
	file := filepath.Join(t.TempDir(), "tbs")
	mustRun(t, filepath.Join(t.TempDir(), "absent.sock"), "", "sample", "framed-content", "--suite", "2", "--data", "x", "--out", file)
	b, _ = os.ReadFile(file)
	check(b, 2)

	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"sample", "framed-content"}, 2},
		{[]string{"sample", "framed-content", "--key", "sig-1", "--suite", "1"}, 2},
		{[]string{"sample", "framed-content", "--key", "init-1"}, 1},
		{[]string{"sample", "framed-content", "--key", "nope"}, 1},
		{[]string{"sample", "nothing"}, 2},
	} {
		code, _, stderr := runCLI(t, sock, "", tc.args...)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (%s)", tc.args, code, tc.code, stderr)
		}
		checkOneErrorLine(t, stderr)
	}
}
