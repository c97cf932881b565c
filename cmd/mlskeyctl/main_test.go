package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// runCLI runs mlskeyctl in-process with the given socket as the --socket
// default.
func runCLI(t *testing.T, socket, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{
		ctx:           context.Background(),
		stdin:         strings.NewReader(stdin),
		stdout:        &out,
		stderr:        &errb,
		defaultSocket: socket,
	}
	code = c.run(args)
	return code, out.String(), errb.String()
}

// checkOneErrorLine checks that stderr is exactly one "mlskeyctl: " line.
func checkOneErrorLine(t *testing.T, stderr string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "mlskeyctl: ") || !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr is not one 'mlskeyctl: ' line: %q", stderr)
	}
}

// jsonKeys returns the sorted member names of a JSON object.
func jsonKeys(t *testing.T, m map[string]any) []string {
	t.Helper()
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestParseSuite(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint32
	}{
		{"1", 1},
		{"7", 7},
		{"0x0001", 1},
		{"0X0003", 3},
		{"0xf0a1", 0xf0a1},
		{"65535", 65535},
		{"MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", 1},
		{"mls_256_dhkemp384_aes256gcm_sha384_p384", 7},
		{" MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448 ", 6},
	} {
		got, err := parseSuite(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSuite(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "0", "0x0", "65536", "0x10000", "-1", "x25519", "MLS_128", "1.0", "0x"} {
		if got, err := parseSuite(in); err == nil {
			t.Errorf("parseSuite(%q) = %d, want an error", in, got)
		}
	}
	for id := uint32(1); id <= 7; id++ {
		name := suiteName(id)
		if got, err := parseSuite(name); err != nil || got != id {
			t.Errorf("parseSuite(suiteName(%d)) = %d, %v", id, got, err)
		}
	}
	if suiteName(8) != "" {
		t.Errorf("suiteName(8) = %q", suiteName(8))
	}
}

func TestParseLifetime(t *testing.T) {
	day := 24 * time.Hour
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{
		{"0", 0},
		{"90d", 90 * day},
		{"1d12h", day + 12*time.Hour},
		{"0d", 0},
		{"720h", 720 * time.Hour},
		{"1h30m", 90 * time.Minute},
		{"106751d", 106751 * day},
	} {
		got, err := parseLifetime(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseLifetime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "-5h", "1.5d", "90", "1d-1h", "1dd", "10days", "999999999999d", "106751d24h"} {
		if got, err := parseLifetime(in); err == nil {
			t.Errorf("parseLifetime(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, tt := range []struct {
		top, args []string
		pos       []string
		g         globals
	}{
		{nil, []string{"ID"}, []string{"ID"}, globals{"/d.sock", false, 30 * time.Second}},
		{nil, []string{"ID", "--json"}, []string{"ID"}, globals{"/d.sock", true, 30 * time.Second}},
		{nil, []string{"--json", "ID", "--socket", "/x", "--timeout=1s"}, []string{"ID"}, globals{"/x", true, time.Second}},
		{nil, []string{"--", "--json"}, []string{"--json"}, globals{"/d.sock", false, 30 * time.Second}},
		{nil, []string{"a", "--", "-b", "c"}, []string{"a", "-b", "c"}, globals{"/d.sock", false, 30 * time.Second}},
		{nil, []string{"-", "--json"}, []string{"-"}, globals{"/d.sock", true, 30 * time.Second}},
		// Global flags given before the command carry over and can be
		// overridden after it.
		{[]string{"--json", "--socket", "/top"}, []string{"ID"}, []string{"ID"}, globals{"/top", true, 30 * time.Second}},
		{[]string{"--socket", "/top", "--timeout", "5s"}, []string{"--socket", "/cmd", "ID"}, []string{"ID"}, globals{"/cmd", false, 5 * time.Second}},
	} {
		c := &cli{defaultSocket: "/d.sock", usage: map[*flag.FlagSet]func(){}}
		top := c.newFlagSet("", "", "", nil)
		if _, err := c.parseTop(top, append(tt.top, "key")); err != nil {
			t.Fatal(err)
		}
		c.recordTop(top)
		fs := c.newFlagSet("key show", "ID", "", nil)
		pos, err := c.parse(fs, tt.args)
		if err != nil {
			t.Errorf("%q %q: %v", tt.top, tt.args, err)
			continue
		}
		if !slices.Equal(pos, tt.pos) || c.g != tt.g {
			t.Errorf("%q %q: positional %q, globals %+v; want %q, %+v", tt.top, tt.args, pos, c.g, tt.pos, tt.g)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"--bogus", "status"},
		{"--timeout", "x", "status"},
		{"status", "extra"},
		{"status", "--bogus"},
		{"version", "x"},
		{"key"},
		{"key", "bogus"},
		{"key", "create"},
		{"key", "create", "--suite", "0"},
		{"key", "create", "--suite", "MLS_FOO"},
		{"key", "list", "--role", "x"},
		{"key", "list", "--state", "x"},
		{"key", "list", "extra"},
		{"key", "show"},
		{"key", "show", "a", "b"},
		{"key", "delete"},
		{"key", "delete", ""},
		{"sign"},
		{"sign", "--key", "k"},
		{"sign", "--label", "FramedContentTBS"},
		{"sign", "--key", "k", "--label", "MLS 1.0 FramedContentTBS"},
		{"keypackage"},
		{"keypackage", "create", "--suite", "1"},
		{"keypackage", "create", "--identity", "alice"},
		{"keypackage", "create", "--suite", "1", "--identity", ""},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--x509-chain", "f.pem"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--count", "0"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--count", "1001"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--lifetime", "1y"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--lifetime", "0"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--lifetime", "1ns"},
		{"keypackage", "create", "--suite", "1", "--identity", "a", "--lifetime", "59m"},
		{"status", "--timeout", "-1s"},
		{"--timeout=-1s", "status"},
		{"decrypt"},
		{"decrypt", "--key", "k", "--kem-output", "zz"},
		{"decrypt", "--key", "k", "--ciphertext", "00"},
		{"decrypt", "--key", "k", "--kem-output", "00"},
		{"key", "attest", "k", "--nonce", "zz"},
		{"key", "attest", "k", "--nonce", strings.Repeat("00", 65)},
		{"welcome"},
		{"welcome", "open", "x"},
	} {
		code, stdout, stderr := runCLI(t, "/nonexistent/mlskeyd.sock", "", args...)
		if code != 2 || stdout != "" {
			t.Errorf("%q: exit %d, stdout %q; want 2 and nothing", args, code, stdout)
		}
		checkOneErrorLine(t, stderr)
	}
}

// TestUnknownFlagSuggests: a mistyped flag is named with the nearest one
// the command takes and where its flags are listed.
func TestUnknownFlagSuggests(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"key", "create", "--suit", "2"}, "mlskeyctl: key create: unknown flag --suit (did you mean --suite?); see 'mlskeyctl key create --help'\n"},
		{[]string{"--jsn", "status"}, "mlskeyctl: unknown flag --jsn (did you mean --json?); see 'mlskeyctl --help'\n"},
		{[]string{"key", "list", "--xyzzy"}, "mlskeyctl: key list: unknown flag --xyzzy; see 'mlskeyctl key list --help'\n"},
	} {
		code, stdout, stderr := runCLI(t, "/nonexistent/mlskeyd.sock", "", c.args...)
		if code != 2 || stdout != "" || stderr != c.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2, nothing and %q", c.args, code, stdout, stderr, c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"--help"},
		{"-h"},
		{"help"},
		{"help", "key", "list"},
		{"status", "--help"},
		{"version", "--help"},
		{"key", "--help"},
		{"key", "create", "--help"},
		{"key", "list", "-h"},
		{"key", "show", "--help"},
		{"key", "delete", "--help"},
		{"sign", "--help"},
		{"keypackage", "create", "--help"},
		{"welcome", "open", "--help"},
		{"--json", "welcome", "open", "--help"},
		{"decrypt", "--help"},
		{"key", "attest", "--help"},
	} {
		code, stdout, stderr := runCLI(t, "/nonexistent/mlskeyd.sock", "", args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "Usage: mlskeyctl") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.40q", args, code, stderr, stdout)
		}
	}
	_, stdout, _ := runCLI(t, "/nonexistent/mlskeyd.sock", "", "keypackage", "create", "--help")
	for _, f := range []string{"--suite S", "--identity NAME", "--x509-chain FILE", "--signature-key ID", "--count N",
		"--last-resort", "--lifetime duration", "--out FILE", "--json", "--socket path", "--timeout duration"} {
		if !strings.Contains(stdout, "\n  "+f+"\n") {
			t.Errorf("keypackage create --help does not list %q:\n%s", f, stdout)
		}
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, "", "", "version")
	if code != 0 || !strings.HasPrefix(stdout, "mlskeyctl ") {
		t.Errorf("version: exit %d, %q", code, stdout)
	}
	code, stdout, _ = runCLI(t, "", "", "version", "--json")
	var v map[string]string
	if err := json.Unmarshal([]byte(stdout), &v); code != 0 || err != nil || v["version"] == "" {
		t.Errorf("version --json: exit %d, %q", code, stdout)
	}
}

func TestNoDaemon(t *testing.T) {
	code, stdout, stderr := runCLI(t, t.TempDir()+"/absent.sock", "", "status")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "cannot reach mlskeyd") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	checkOneErrorLine(t, stderr)
	code, _, stderr = runCLI(t, t.TempDir(), "", "status")
	if code != 1 || !strings.Contains(stderr, "not a socket") {
		t.Errorf("directory as socket: exit %d, stderr %q", code, stderr)
	}
}

func TestErrorLine(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, `key "abc" not found`), `not found: key "abc" not found`},
		{status.Error(codes.InvalidArgument, "bad\nthing  here"), "invalid argument: bad thing here"},
		{status.Error(codes.FailedPrecondition, "x"), "failed precondition: x"},
		{status.Error(codes.DeadlineExceeded, "x"), "deadline exceeded: x"},
		{status.Error(codes.Unavailable, "x"), "unavailable: x"},
		{status.Error(codes.PermissionDenied, "x"), "permission denied: x"},
		{errors.New("open f: no such file or directory"), "open f: no such file or directory"},
	} {
		if got := errorLine(tt.err); got != tt.want {
			t.Errorf("errorLine(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if w := codeWords(c); w != strings.ToLower(w) || strings.Contains(w, "(") {
			t.Errorf("codeWords(%v) = %q", c, w)
		}
	}
	if got := codeWords(codes.ResourceExhausted); got != "resource exhausted" {
		t.Errorf("codeWords(ResourceExhausted) = %q", got)
	}
}

func TestKeyJSON(t *testing.T) {
	b, _ := json.Marshal(newKeyJSON(sigKey(1)))
	var m map[string]any
	json.Unmarshal(b, &m)
	if got, want := jsonKeys(t, m), []string{"created_at", "id", "protection", "public_key", "role", "state", "suite"}; !slices.Equal(got, want) {
		t.Errorf("signature key members %q, want %q", got, want)
	}
	want := map[string]any{
		"id": "sig-1", "suite": 1.0, "role": "signature", "state": "active",
		"public_key": strings.Repeat("ab", 32), "protection": "hardware", "created_at": "2026-01-02T03:04:05Z",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("signature key JSON %v, want %v", m, want)
	}

	b, _ = json.Marshal(newKeyJSON(initKey()))
	m = nil
	json.Unmarshal(b, &m)
	want = map[string]any{
		"id": "init-1", "suite": 1.0, "role": "init", "state": "consumed", "public_key": "010203", "protection": "sealed",
		"key_package_ref": "feed", "last_resort": true, "signature_key_id": "sig-1",
		"created_at": "2026-01-02T03:04:05Z", "retired_at": "2026-01-02T03:04:05Z",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("init key JSON %v, want %v", m, want)
	}

	k := initKey()
	k.LastResort = false
	b, _ = json.Marshal(newKeyJSON(k))
	if !strings.Contains(string(b), `"last_resort":false`) {
		t.Errorf("init key JSON without last_resort false: %s", b)
	}
}

func TestStatusJSON(t *testing.T) {
	info, _ := (&fakeServer{}).GetInfo(context.Background(), nil)
	b, _ := json.Marshal(newStatusJSON(info))
	want := `{"backend":"fake","device":"test device","version":"0.0.0-test","suites":[` +
		`{"cipher_suite":1,"name":"MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519","signature":"hardware","init":"wrapped","leaf_encryption":"sealed"},` +
		`{"cipher_suite":4,"name":"MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448","signature":null,"init":"sealed","leaf_encryption":"sealed"}],` +
		`"installation_id":"00112233445566778899aabbccddeeff","missing_keys":1,"stray_keys":0,"missing_key_ids":["0190aa"],"stray_key_ids":[]}`
	if string(b) != want {
		t.Errorf("status JSON\n%s\nwant\n%s", b, want)
	}
	b, _ = json.Marshal(newStatusJSON(&mlskeyv1.GetInfoResponse{}))
	if want := `{"backend":"","device":"","version":"","suites":[],"installation_id":"","missing_keys":0,"stray_keys":0,"missing_key_ids":[],"stray_key_ids":[]}`; string(b) != want {
		t.Errorf("empty status JSON %s, want %s", b, want)
	}
}

func TestWelcomeJSON(t *testing.T) {
	f := &fakeServer{}
	r, _ := f.OpenWelcome(context.Background(), &mlskeyv1.OpenWelcomeRequest{Welcome: []byte{0, 1, 0, 3, 0}})
	b, _ := json.Marshal(newWelcomeJSON(r))
	want := `{"key_package_ref":"aa00","init_key_id":"init-0","cipher_suite":1,"group_id":"67726f7570","epoch":7,` +
		`"group_info":"0303","joiner_secret":"0101","path_secret":"0202","psks":[]}`
	if string(b) != want {
		t.Errorf("welcome JSON\n%s\nwant\n%s", b, want)
	}
	r, _ = f.OpenWelcome(context.Background(), &mlskeyv1.OpenWelcomeRequest{Welcome: []byte{0, 1, 0, 3, 0x50}})
	b, _ = json.Marshal(newWelcomeJSON(r))
	want = `{"key_package_ref":"aa00","init_key_id":"init-0","cipher_suite":1,"group_id":"","epoch":0,` +
		`"group_info":"","joiner_secret":"0101","path_secret":null,"psks":[` +
		`{"psk_type":1,"psk_id":"04","resumption_usage":0,"psk_group_id":"","psk_epoch":0,"psk_nonce":"0505"}]}`
	if string(b) != want {
		t.Errorf("welcome JSON with PSKs\n%s\nwant\n%s", b, want)
	}
}
