package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// TestCtlBench runs `mlskeyctl bench` against a real daemon for each op
// but the slow keypackage-create, checks its JSON contract, and that the
// bench deleted every key it made.
func TestCtlBench(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	defer d.stop()
	want := []string{"concurrency", "duration_s", "errors", "op", "ops", "ops_per_sec", "p50_us", "p99_us", "suite"}
	for _, op := range []string{"sign", "open-welcome", "key-create"} {
		out, errOut, code := d.ctl("bench", "--op", op, "--suite", "2", "--concurrency", "2", "--duration", "300ms", "--json")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", op, code, errOut)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("%s: not one JSON object: %v: %q", op, err, out)
		}
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, want) || m["op"] != op || m["errors"] != 0.0 || m["ops"].(float64) < 1 {
			t.Fatalf("%s: %s", op, out)
		}
	}
	resp, err := d.client().ListKeys(context.Background(), &pb.ListKeysRequest{State: pb.KeyState_KEY_STATE_ACTIVE})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Keys) != 0 {
		t.Fatalf("%d active keys left after the benches, want 0", len(resp.Keys))
	}
	if _, errOut, code := d.ctl("bench", "--op", "dance", "--suite", "2"); code != 2 {
		t.Fatalf("unknown op: exit %d, %s", code, errOut)
	}
}
