package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeepPrunesAndVerifiesFromRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 4000, Keep: 2})
	for i := range 200 {
		if err := l.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	last := l.LastSeq()
	l.Close()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("%d files, want 2 rotated and the live one: %v", len(files), files)
	}
	// Plain verification reports the missing start, naming the CLI flag.
	_, err = Verify(files...)
	ce := wantChainErr(t, err, KindStart, files[0], 1)
	if !strings.Contains(ce.Problem, "mlskeyctl audit verify --from-rotation") || strings.Contains(ce.Problem, "AllowNonGenesisStart") {
		t.Errorf("problem %q", ce.Problem)
	}
	rep, err := VerifyWith(VerifyOptions{FromRotation: true}, files...)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.PruneChecked || rep.LastSeq != last || rep.FirstSeq <= 1 || rep.StartPrev == "" {
		t.Fatalf("report %+v", rep)
	}
	// Removing one more file than the log recorded is detected.
	if err := os.Remove(files[0]); err != nil {
		t.Fatal(err)
	}
	_, err = VerifyWith(VerifyOptions{FromRotation: true}, files[1:]...)
	var ce2 *ChainError
	if !errors.As(err, &ce2) || ce2.Kind != KindRemoved {
		t.Fatalf("after removing an extra file: %v", err)
	}
}
