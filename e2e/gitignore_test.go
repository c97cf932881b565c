package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestDocumentedStateDirsIgnored: every state directory the docs and
// scripts suggest (they hold tokens, PINs and simulator seeds) is
// git-ignored, so it cannot be committed by accident.
func TestDocumentedStateDirsIgnored(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("no git")
	}
	if err := exec.Command(git, "-C", "..", "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	files, _ := filepath.Glob("../docs/*.md")
	files = append(files, "../README.md", "../scripts/dev.sh")
	suggested := regexp.MustCompile(`(?:--state-dir |dir=|state=\$\{1:-)(\.[A-Za-z0-9._-]+)`)
	dirs := map[string]bool{".dev-tpm": true, ".dev-swtpm": true, ".dev-state": true}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range suggested.FindAllStringSubmatch(string(b), -1) {
			dirs[m[1]] = true
		}
	}
	for d := range dirs {
		if err := exec.Command(git, "-C", "..", "check-ignore", "-q", d+"/tpm-simulator-seed").Run(); err != nil {
			t.Errorf("%s/ is not git-ignored", d)
		}
	}
}
