package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mlskeyd/mlskeyd/pkcs11"
)

// TestBenchRunsEveryOpAndLeavesOtherKeys runs `mlskeyd bench --dev` for
// every op and checks the JSON contract, and that the token holds exactly
// what it held before: the bench destroyed its own keys and never touched
// a key it did not make (a running daemon's).
func TestBenchRunsEveryOpAndLeavesOtherKeys(t *testing.T) {
	if pkcs11.FindSoftHSM() == "" {
		t.Skip("SoftHSM 2 not installed")
	}
	state := t.TempDir()
	cfg := newSettings()
	release, err := setUpDev(cfg, state, "pkcs11", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	pin, err := readPIN(filepath.Join(state, "pin"), os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	be, err := pkcs11.Open(ctx, pkcs11.Config{Module: cfg.str("pkcs11-module"), TokenLabel: cfg.str("pkcs11-token"), PIN: pin})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	// A key of "the daemon": the bench must leave it alone.
	if _, _, err := be.Generate(ctx, "0123456789abcdef0123456789abcdef", "ecdsa-p256"); err != nil {
		t.Fatal(err)
	}
	before, err := be.List(ctx)
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"concurrency", "duration_s", "errors", "op", "ops", "ops_per_sec", "p50_us", "p99_us", "suite"}
	for _, op := range []string{"sign", "open-welcome", "key-create", "keypackage-create"} {
		var out, errOut bytes.Buffer
		err := runBench([]string{"--dev", "--state-dir", state, "--op", op, "--suite", "2",
			"--concurrency", "2", "--duration", "200ms", "--json"}, os.Getenv, &out, &errOut)
		if err != nil {
			t.Fatalf("%s: %v\n%s", op, err, errOut.String())
		}
		var m map[string]any
		if err := json.Unmarshal(out.Bytes(), &m); err != nil {
			t.Fatalf("%s: output is not one JSON object: %v: %q", op, err, out.String())
		}
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, want) {
			t.Fatalf("%s: JSON fields %v, want %v", op, keys, want)
		}
		if m["op"] != op || m["suite"] != 2.0 || m["concurrency"] != 2.0 || m["errors"] != 0.0 || m["ops"].(float64) < 1 {
			t.Fatalf("%s: %s\n%s", op, out.String(), errOut.String())
		}
		if op == "keypackage-create" && int(m["ops"].(float64))%100 != 0 {
			t.Fatalf("keypackage-create counts KeyPackages in batches of 100: %s", out.String())
		}
	}
	after, err := be.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !equalKeys(after, before) {
		t.Fatalf("token held %v before the benches and %v after", before, after)
	}
}

func equalKeys[T any](a, b []T) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestBenchRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--op", "dance"},
		{"--op", "sign", "--concurrency", "0"},
		{"--op", "sign", "--duration", "0s"},
		{"--op", "sign", "--suite", "x"},
	} {
		var out, errOut bytes.Buffer
		err := runBench(args, func(string) string { return "" }, &out, &errOut)
		if err == nil || out.Len() != 0 {
			t.Errorf("%v: err %v, output %q", args, err, out.String())
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error of several lines: %v", args, err)
		}
	}
}
