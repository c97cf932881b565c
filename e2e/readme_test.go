package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestREADME runs every ```console block of README.md, as written, against
// a dev daemon, so the README cannot drift from what the commands do.
//
// The blocks run in order in one bash, as a reader would type them in one
// terminal: a line starting with "$ " is a command, the lines after it (up to
// the next command or the end of the block) what it prints, stdout and
// stderr together. The working directory is a fresh temporary directory
// laid out like a checkout after scripts/dev.sh: bin/ holds the freshly built
// mlskeyd and mlskeyctl, scripts/ is the repository's, and the daemon runs
// in dev mode on .dev-state, exactly as scripts/dev.sh starts it.
//
// Output is compared by shape (see shapeMatch): values that differ from run
// to run — 8 or more hex digits (ids, keys, signatures, serials), RFC 3339
// times, "uid:N" — stand for any value of their kind; "…" in the README
// matches any text (and, next to hex digits, any hex value); a line "..."
// matches any number of lines. A command whose expected output ends with an
// "mlskeyctl: " error line must fail; every other command must succeed.
//
// A command the test cannot run (one that needs root, systemd or a real
// device) is marked in the README itself with a trailing comment
// "# untested: REASON", visible to readers; the test skips it and logs why.
func TestREADME(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := readmeSteps(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) == 0 {
		t.Fatal("README.md has no console blocks")
	}
	interop, _ := filepath.Abs("../clients/interop")
	if _, err := os.Stat(filepath.Join(interop, "node_modules", "ts-mls")); err != nil {
		// The walk-through makes a Welcome with ts-mls; scripts/make-welcome.sh
		// would install it, which a test must not do.
		if os.Getenv("MLSKEYD_REQUIRE_NODE") == "1" {
			t.Fatalf("ts-mls is not installed in %s (run npm ci there; scripts/test.sh does)", interop)
		}
		t.Skip("ts-mls not installed (scripts/test.sh installs it)")
	}

	work := t.TempDir()
	scripts, _ := filepath.Abs("../scripts")
	for name, target := range map[string]string{"bin": binDir, "scripts": scripts} {
		if err := os.Symlink(target, filepath.Join(work, name)); err != nil {
			t.Fatal(err)
		}
	}
	startDaemon(t, filepath.Join(work, ".dev-state"))

	// One bash runs every command; each command's output goes to its own
	// file, so a failing command does not hide the others.
	var script strings.Builder
	for i, s := range steps {
		if s.skip != "" {
			t.Logf("README.md:%d: not run (%s): %s", s.line, s.skip, s.cmd)
			continue
		}
		fmt.Fprintf(&script, "{ %s\n} >.readme-out.%d 2>&1; echo $? >.readme-rc.%d\n", s.cmd, i, i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sh := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", script.String())
	sh.Dir = work
	sh.Env = cleanEnv()
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("running the README's commands: %v\n%s", err, out)
	}

	for i, s := range steps {
		if s.skip != "" {
			continue
		}
		out, err := os.ReadFile(filepath.Join(work, fmt.Sprintf(".readme-out.%d", i)))
		if err != nil {
			t.Fatalf("README.md:%d: %s: did not run: %v", s.line, s.cmd, err)
		}
		rcText, _ := os.ReadFile(filepath.Join(work, fmt.Sprintf(".readme-rc.%d", i)))
		rc, _ := strconv.Atoi(strings.TrimSpace(string(rcText)))
		got := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		if len(out) == 0 {
			got = nil
		}
		wantFail := len(s.want) > 0 && strings.HasPrefix(s.want[len(s.want)-1], "mlskeyctl: ")
		switch {
		case wantFail && rc == 0:
			t.Errorf("README.md:%d: %s: exit 0, the README shows an error", s.line, s.cmd)
		case !wantFail && rc != 0:
			t.Errorf("README.md:%d: %s: exit %d:\n%s", s.line, s.cmd, rc, out)
		}
		if msg := shapeMatch(s.want, got); msg != "" {
			t.Errorf("README.md:%d: %s: output differs from the README: %s\n--- README:\n%s\n--- got:\n%s",
				s.line, s.cmd, msg, strings.Join(s.want, "\n"), out)
		}
	}
}

// readmeStep is one command of a console block and the output shown for it.
type readmeStep struct {
	line int    // the command's line in README.md
	cmd  string // without "$ "
	want []string
	skip string // the reason, for a command marked "# untested: REASON"
}

var untested = regexp.MustCompile(`\s#\s*untested:\s*(.+)$`)

// readmeSteps extracts the commands and their output from the ```console
// blocks of a Markdown document.
func readmeSteps(doc string) ([]readmeStep, error) {
	var steps []readmeStep
	in := false
	sc := bufio.NewScanner(strings.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case !in:
			in = strings.TrimSpace(line) == "```console"
		case strings.HasPrefix(line, "```"):
			in = false
		case strings.HasPrefix(line, "$ "):
			s := readmeStep{line: n, cmd: strings.TrimPrefix(line, "$ ")}
			if m := untested.FindStringSubmatch(s.cmd); m != nil {
				s.skip = m[1]
			}
			if strings.HasSuffix(s.cmd, "\\") {
				return nil, fmt.Errorf("README.md:%d: continued command lines are not supported; write the command on one line", n)
			}
			steps = append(steps, s)
		case len(steps) == 0:
			return nil, fmt.Errorf("README.md:%d: output before the first command of a console block", n)
		default:
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, line)
		}
	}
	if in {
		return nil, fmt.Errorf("README.md: unterminated console block")
	}
	return steps, sc.Err()
}

var (
	shapeTime     = regexp.MustCompile(`\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\b`)
	shapeUID      = regexp.MustCompile(`\buid:\d+\b`)
	shapeHex      = regexp.MustCompile(`\b[0-9a-f]{8,}\b`)
	shapeElidedHx = regexp.MustCompile(`[0-9a-f]+…[0-9a-f]*|…[0-9a-f]+`)
	// A program may shorten a long hex value itself (key list's KP REF).
	shapeCutHex = regexp.MustCompile(`\b[0-9a-f]{8,}…`)
	shapeSpace  = regexp.MustCompile(`\s+`)
)

// shapeLine reduces a line to its shape: runs of spaces (table alignment
// follows the values) become one, and values that change from run to run
// become a placeholder.
func shapeLine(s string, readme bool) string {
	s = strings.TrimSpace(shapeSpace.ReplaceAllString(s, " "))
	s = shapeTime.ReplaceAllString(s, "<time>")
	s = shapeUID.ReplaceAllString(s, "uid:<n>")
	if readme {
		s = shapeElidedHx.ReplaceAllString(s, "<hex>")
	} else {
		s = shapeCutHex.ReplaceAllString(s, "<hex>")
	}
	return shapeHex.ReplaceAllString(s, "<hex>")
}

// shapeMatch compares output with the README's lines for it and returns
// "" when they have the same shape, else what differs.
func shapeMatch(want, got []string) string {
	var match func(w, g int) bool
	match = func(w, g int) bool {
		if w == len(want) {
			return g == len(got)
		}
		if strings.TrimSpace(want[w]) == "..." {
			for k := g; k <= len(got); k++ {
				if match(w+1, k) {
					return true
				}
			}
			return false
		}
		return g < len(got) && lineMatches(want[w], got[g]) && match(w+1, g+1)
	}
	if match(0, 0) {
		return ""
	}
	// Name the first line that differs, ignoring wildcards, to help.
	for i, w := range want {
		if strings.TrimSpace(w) == "..." {
			return "see the lines after the \"...\""
		}
		if i >= len(got) {
			return fmt.Sprintf("missing line %q", w)
		}
		if !lineMatches(w, got[i]) {
			return fmt.Sprintf("line %d: want the shape %q, got %q", i+1, shapeLine(w, true), shapeLine(got[i], false))
		}
	}
	return fmt.Sprintf("%d extra lines", len(got)-len(want))
}

func lineMatches(want, got string) bool {
	parts := strings.Split(shapeLine(want, true), "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	re := regexp.MustCompile("^" + strings.Join(parts, ".*") + "$")
	return re.MatchString(shapeLine(got, false))
}

// TestShapeMatch pins the README test's comparison rules.
func TestShapeMatch(t *testing.T) {
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{"id:  01a21ff35de96378da383e93148efe4b", "id:          01a22d161ed1b19c407df52bf8351ec7", true},
		{`  "public_key": "0441450076…c30f",`, `  "public_key": "049a4f76956e64b07ae9bbd6be63d0a2",`, true},
		{"group id: 9b0c…", "group id: 2414c503a6b0c098a7c3ca4395956329", true},
		{"created: 2026-11-28T02:19:32Z", "created: 2026-11-30T15:32:34Z", true},
		{`"owner": "uid:1000",`, `"owner": "uid:0",`, true},
		{"mlskeyctl: invalid argument: content: …", "mlskeyctl: invalid argument: content: not a FramedContentTBS", true},
		{"epoch: 1", "epoch: 2", false},
		{"state: active", "state: consumed", false},
		{"id: 01a21ff35de96378da383e93148efe4b", "id: -", false},
		{"3045022100…", "mlskeyctl: not found", false},
	} {
		if got := lineMatches(tc.want, tc.got); got != tc.ok {
			t.Errorf("lineMatches(%q, %q) = %v", tc.want, tc.got, got)
		}
	}
	if msg := shapeMatch([]string{"a", "...", "c"}, []string{"a", "b", "b", "c"}); msg != "" {
		t.Errorf("... does not match lines: %s", msg)
	}
	if msg := shapeMatch([]string{"a", "...", "c"}, []string{"a", "c"}); msg != "" {
		t.Errorf("... does not match zero lines: %s", msg)
	}
	if msg := shapeMatch([]string{"a"}, []string{"a", "b"}); msg == "" {
		t.Error("an extra line matched")
	}
	if msg := shapeMatch(nil, nil); msg != "" {
		t.Errorf("no output: %s", msg)
	}
}

// TestMakeWelcomeScript: scripts/make-welcome.sh picks the N-th KeyPackage
// of a file of several, and the daemon opens the Welcome with that
// KeyPackage's init key.
func TestMakeWelcomeScript(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	var kps []createdKP
	dir := t.TempDir()
	file := filepath.Join(dir, "kps.bin")
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "bob@example.org", "--count", "3", "--out", file)
	// Skips like the interop tests when ts-mls is missing.
	tsmls(t, "verify", map[string][]string{"key_packages": {}}, &struct{}{})
	run := func(args ...string) (string, error) {
		cmd := exec.Command("../scripts/make-welcome.sh", args...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	welcome := filepath.Join(dir, "welcome.bin")
	out, err := run(file, welcome, "2")
	if err != nil || !strings.Contains(out, "for KeyPackage "+kps[1].KeyPackageRef) {
		t.Fatalf("make-welcome.sh N=2: %v: %s", err, out)
	}
	var opened openedWelcome
	d.ctlJSON(t, &opened, "welcome", "open", "--in", welcome)
	if opened.KeyPackageRef != kps[1].KeyPackageRef {
		t.Fatalf("the Welcome is for %s, want the second KeyPackage %s", opened.KeyPackageRef, kps[1].KeyPackageRef)
	}
	if out, err := run(file, welcome, "4"); err == nil || !strings.Contains(out, "holds 3 KeyPackage(s), not 4") {
		t.Fatalf("make-welcome.sh N=4 of 3: %v: %s", err, out)
	}
	if out, err := run(welcome, filepath.Join(dir, "w2")); err == nil || !strings.Contains(out, "no MLSMessage(KeyPackage) at byte 0") {
		t.Fatalf("make-welcome.sh on a Welcome: %v: %s", err, out)
	}
}

// TestREADMECommandTable: the README's table of mlskeyctl commands names
// every command 'mlskeyctl --help' lists, every flag of each, and every
// field of the key objects --json prints.
func TestREADMECommandTable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, l := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(l, "| `mlskeyctl ") {
			rows = append(rows, l)
		}
	}
	ctl := func(args ...string) string {
		out, err := exec.Command(filepath.Join(binDir, "mlskeyctl"), args...).Output()
		if err != nil {
			t.Fatalf("mlskeyctl %q: %v", args, err)
		}
		return string(out)
	}
	// The Commands section of the help: "  key show ID    show a key"; a
	// command too long for the column has its description on the next line.
	help := ctl("--help")
	_, section, _ := strings.Cut(help, "Commands:\n")
	section, _, _ = strings.Cut(section, "\n\n")
	var commands []string
	for _, l := range strings.Split(section, "\n") {
		if !strings.HasPrefix(l, "  ") || strings.HasPrefix(l, "      ") {
			continue
		}
		var words []string
		for _, w := range strings.Fields(strings.SplitN(strings.TrimSpace(l), "  ", 2)[0]) {
			if w == strings.ToUpper(w) { // an argument: ID, FILE
				break
			}
			words = append(words, w)
		}
		commands = append(commands, strings.Join(words, " "))
	}
	if len(commands) < 10 {
		t.Fatalf("found only %q in mlskeyctl --help:\n%s", commands, help)
	}
	flagRE := regexp.MustCompile(`(?m)^  (--[a-z0-9-]+)`)
	for _, cmd := range commands {
		var row string
		for _, r := range rows {
			if regexp.MustCompile("`mlskeyctl " + regexp.QuoteMeta(cmd) + "[ `]").MatchString(r) {
				row = r
			}
		}
		if row == "" {
			t.Errorf("README's command table lacks mlskeyctl %s", cmd)
			continue
		}
		_, flags, _ := strings.Cut(ctl(append(strings.Fields(cmd), "--help")...), "\nFlags:\n")
		flags, _, _ = strings.Cut(flags, "\nGlobal flags:\n")
		for _, m := range flagRE.FindAllStringSubmatch(flags, -1) {
			if !strings.Contains(row, m[1]) {
				t.Errorf("README's row for mlskeyctl %s lacks %s", cmd, m[1])
			}
		}
	}

	// Every field of the key objects, for every role and state.
	d := startDaemon(t, t.TempDir())
	var kps []createdKP
	d.ctlJSON(t, &kps, "keypackage", "create", "--suite", "2", "--identity", "a", "--last-resort")
	d.ctlJSON(t, &struct{}{}, "key", "delete", kps[0].InitKeyID)
	var keys []map[string]any
	d.ctlJSON(t, &keys, "key", "list")
	table := strings.Join(rows, "\n")
	missing := map[string]bool{}
	for _, k := range keys {
		for field := range k {
			missing[field] = missing[field] || !strings.Contains(table, "`"+field+"`")
		}
	}
	for field, m := range missing {
		if m {
			t.Errorf("README's command table does not name the key field %s", field)
		}
	}
}
