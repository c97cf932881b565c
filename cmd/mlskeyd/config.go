package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mlskeyd/mlskeyd/internal/suggest"
	"golang.org/x/sys/unix"
)

// Every setting has one name, used as the flag (--name), the environment
// variable (MLSKEYD_NAME, dashes as underscores) and the config file key
// (name, dashes as underscores). Precedence, highest first: flag,
// environment, config file, built-in default (some defaults depend on
// --dev and --state-dir).
type setting struct {
	name, usage, def string
	isBool           bool
	value            string
	from             string // "flag", "env", "file", "default"
}

type settings struct {
	list   []*setting
	byName map[string]*setting
	// policy is the config file's "policy" object, kept as JSON for
	// server.Policy; it has no flag or environment form.
	policy json.RawMessage
	// configPath is the config file read, for messages.
	configPath string
}

func newSettings() *settings {
	s := &settings{byName: map[string]*setting{}}
	add := func(name, def, usage string, isBool bool) {
		st := &setting{name: name, def: def, usage: usage, isBool: isBool, value: def, from: "default"}
		s.list = append(s.list, st)
		s.byName[name] = st
	}
	add("config", "", "JSON config file (keys are setting names with _ for -)", false)
	add("dev", "false", "development mode: SoftHSM token, PIN, catalog and socket inside --state-dir, created when missing", true)
	add("state-dir", "", "state directory (default /var/lib/mlskeyd; required with --dev)", false)
	add("socket", "", "Unix socket path (default /run/mlskeyd/mlskeyd.sock; STATE/mlskeyd.sock with --dev)", false)
	add("socket-mode", "0600", "file mode of the socket (e.g. 0660 with --socket-group)", false)
	add("socket-group", "", "group of the socket: its members may connect when --socket-mode allows the group", false)
	add("admin-uids", "", "comma list of uids that may see and use every key and create keys for others", false)
	add("admin-gids", "", "comma list of gids whose members are admins", false)
	add("audit-log", "", "audit log file (default STATE/audit.log)", false)
	add("audit-max-size", "67108864", "rotate the audit log when it passes this many bytes (0: never); the chain continues in the next file", false)
	add("audit-keep", "0", "keep this many rotated audit log files, removing older ones at rotation (0: keep all); verify what remains with mlskeyctl audit verify --from-rotation", false)
	add("audit-fail-closed", "false", "refuse any operation that cannot be written to the audit log", true)
	add("catalog", "", "key catalog file (default STATE/catalog.db)", false)
	add("adopt-device", "false", "bind a catalog and a device that carry no common installation id: a new catalog takes over the device's keys (as strays), or a catalog takes a device without a marker (its keys missing there are quarantined); never merges two installations", true)
	add("backend", "pkcs11", "device backend: pkcs11 or tpm", false)
	add("pkcs11-uri", "", "PKCS#11 URI (RFC 7512) of the token: pkcs11:token=…;serial=…?module-path=…&pin-source=file:… (the pkcs11-* settings below are shorthands)", false)
	add("pkcs11-module", "", "PKCS#11 module path (default: SoftHSM)", false)
	add("pkcs11-token", "", "token label", false)
	add("pkcs11-serial", "", "token serial number", false)
	add("pkcs11-pin-file", "", "file holding the user PIN (mode 0600 or stricter); or set MLSKEYD_PKCS11_PIN", false)
	add("pkcs11-max-sessions", "0", "PKCS#11 sessions, i.e. concurrent device operations (0: from the token's limit)", false)
	add("tpm", "", "TPM: /dev/tpmrm0 (default), tcp://HOST:PORT or unix://PATH (swtpm), sim (in-process simulator, --dev only, where it is the default with its seed kept in STATE)", false)
	add("tpm-simulator-seed-file", "", "with --tpm sim: file holding the simulator's seed, so its keys survive restarts (dev mode: STATE/tpm-simulator-seed)", false)
	add("tpm-command-timeout", "10s", "longest a request waits for the TPM before failing with UNAVAILABLE", false)
	add("tpm-loaded-keys", "2", "MLS keys kept loaded in the TPM (it has about 3 transient slots)", false)
	add("tpm-epoch-handles", "3", "persistent TPM handles (from 0x814D4C00) the sealing epochs may take", false)
	add("tpm-revocation-indices", "16", "NV bit-field indices (from 0x01004D00, 64 HPKE keys and about 100 bytes of TPM NV each) for per-key revocation of TPM HPKE keys (0: off, epoch rule only)", false)
	add("tpm-revocation-roles", "hpke", "TPM keys that get a revocation bit: hpke (init and leaf encryption keys) or all (signature keys too: a deleted signature key then cannot sign from an old catalog copy, at the cost of TPM2_PolicyNV before each signature); keys already made keep what they have", false)
	add("seal-epoch", "24h", "how long one sealing epoch lasts: a retired sealed key can be revived from an old copy of the catalog for at most 1.25 times this; \"retire\" starts a new epoch at every retirement (no window; re-seals every active sealed key each time)", false)
	add("init-key-protection", "", "protection of new init and leaf encryption keys: hardware, wrapped or sealed for every suite, or per suite as SUITE=LEVEL (comma list, e.g. 2=wrapped,1=hardware; a config file may give an object {\"2\": \"wrapped\"}); default: wrapped where the device's start-up probe passes, else hardware or sealed (mlskeyctl status says which and why)", false)
	add("require-hardware", "", "roles whose keys must have protection hardware: comma list of signature, init, leaf_encryption, or all", false)
	add("keypackage-lifetime", "2160h", "default KeyPackage lifetime", false)
	add("keypackage-max-lifetime", "8760h", "longest KeyPackage lifetime a request may ask for", false)
	add("sweep-interval", "10m", "how often to destroy device keys whose catalog record is consumed or destroyed but which a failed destruction left, and the keys of expired KeyPackages (0: never)", false)
	add("log-level", "info", "debug, info, warn or error", false)
	add("log-format", "text", "text or json", false)
	add("metrics-listen", "", "serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9464) or unix:PATH; off by default", false)
	add("version", "false", "print the version and exit (like mlskeyd version; not read from the environment or the config file)", true)
	return s
}

// envName is the variable for a setting. MLSKEYD_PKCS11_PIN is read
// separately: the PIN itself never has a flag or a config key, because
// argv is visible to every user and config files get copied around.
func envName(name string) string {
	return "MLSKEYD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

type flagValue struct{ s *setting }

func (f flagValue) String() string {
	if f.s == nil {
		return ""
	}
	return f.s.value
}
func (f flagValue) Set(v string) error { f.s.value, f.s.from = v, "flag"; return nil }
func (f flagValue) IsBoolFlag() bool   { return f.s.isBool }

// errHelp reports that the usage was printed on request: exit status 0.
var errHelp = errors.New("help printed")

// parse reads args, the environment and the config file. The words
// "version" and "help" are accepted as commands, like --version and
// --help. --help prints the usage to stdout and returns errHelp; every
// other problem is returned as one line naming the flag or key at fault.
func (s *settings) parse(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mlskeyd", flag.ContinueOnError)
	// The flag package would print its error and the whole usage to
	// stderr; the caller prints one line instead.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, st := range s.list {
		fs.Var(flagValue{st}, st.name, st.usage)
	}
	usage := func() error {
		fmt.Fprintf(stdout, "usage: mlskeyd [flags]\n       mlskeyd version\n\nEvery flag can also be set as MLSKEYD_<NAME> in the environment or as <name> in the --config file.\nPrecedence: flag, environment, config file, default.\n\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return errHelp
	}
	// Parse flags first to learn --config, then layer: file < env < flag.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return usage()
		}
		return s.flagError(err)
	}
	switch fs.Arg(0) {
	case "":
	case "version":
		s.byName["version"].value, s.byName["version"].from = "true", "flag"
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return s.flagError(err)
		}
	case "help":
		return usage()
	default:
		return fmt.Errorf("unexpected argument %q (mlskeyd takes flags only; see mlskeyd --help)", fs.Arg(0))
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (mlskeyd takes flags only; see mlskeyd --help)", fs.Arg(0))
	}
	if v, _ := s.bool("version"); v {
		return nil // the version needs no config file
	}
	flagged := map[string]string{}
	for _, st := range s.list {
		if st.from == "flag" {
			flagged[st.name] = st.value
		}
	}
	cfgPath := s.byName["config"].value
	if cfgPath == "" {
		cfgPath = getenv(envName("config"))
	}
	if cfgPath != "" {
		if err := s.loadFile(cfgPath); err != nil {
			return err
		}
	}
	for _, st := range s.list {
		// --version is a command, not a setting: an MLSKEYD_VERSION left in
		// a service's environment (a package version, say) must not turn
		// the daemon into a program that prints a line and exits 0.
		if st.name == "version" {
			continue
		}
		if v := getenv(envName(st.name)); v != "" {
			st.value, st.from = v, "env"
		}
		if v, ok := flagged[st.name]; ok {
			st.value, st.from = v, "flag"
		}
	}
	return nil
}

// flagError rewords the flag package's errors: flags with two dashes, the
// nearest known flag for an unknown one.
func (s *settings) flagError(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		name = strings.TrimLeft(name, "-")
		if name == "pkcs11-pin" {
			return errors.New("unknown flag --pkcs11-pin: the PIN is never a flag (argv is visible to every user); use --pkcs11-pin-file or MLSKEYD_PKCS11_PIN")
		}
		msg = "unknown flag --" + name
		if near := s.nearest(name); near != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", near)
		}
		return errors.New(msg + "; see mlskeyd --help")
	}
	msg = strings.NewReplacer("flag -", "flag --", ": -", ": --").Replace(msg)
	return errors.New(msg)
}

// nearest returns the setting name closest to name in edit distance, or ""
// when none is close enough to be a likely typo.
func (s *settings) nearest(name string) string {
	names := make([]string, len(s.list))
	for i, st := range s.list {
		names[i] = st.name
	}
	return suggest.Nearest(name, names)
}

func (s *settings) loadFile(path string) error {
	s.configPath = path
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("config file %s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n"))
			return fmt.Errorf("config file %s: line %d: not valid JSON: %w", path, line, err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("config file %s: not valid JSON: unexpected end of file", path)
		}
		return fmt.Errorf("config file %s: want a JSON object of settings: %w", path, err)
	}
	// "audit": {"log": PATH, "fail_closed": BOOL} is the nested form of
	// audit_log and audit_fail_closed.
	if a, ok := m["audit"]; ok {
		sub, ok := a.(map[string]any)
		if !ok {
			return fmt.Errorf("config file %s: \"audit\" must be an object", path)
		}
		delete(m, "audit")
		for sk, v := range sub {
			m["audit_"+sk] = v
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := strings.ReplaceAll(k, "_", "-")
		switch name {
		case "policy":
			s.policy, _ = json.Marshal(m[k])
			continue
		}
		if name == "pkcs11-pin" {
			return fmt.Errorf("config file %s: the PIN does not belong in a config file; use pkcs11_pin_file", path)
		}
		st, ok := s.byName[name]
		if !ok || name == "config" || name == "version" {
			msg := fmt.Sprintf("config file %s: unknown key %q", path, k)
			if near := s.nearest(name); near != "" && near != "config" && near != "version" {
				msg += fmt.Sprintf(" (did you mean %q?)", strings.ReplaceAll(near, "-", "_"))
			}
			return errors.New(msg)
		}
		switch v := m[k].(type) {
		case string:
			st.value = v
		case bool, float64:
			st.value = fmt.Sprint(v)
		case map[string]any:
			if name != "init-key-protection" {
				return fmt.Errorf("config file %s: key %q must be a string, number or boolean", path, k)
			}
			// init_key_protection: {"2": "wrapped", "1": "hardware"}.
			parts := make([]string, 0, len(v))
			for suite, level := range v {
				parts = append(parts, fmt.Sprintf("%s=%v", suite, level))
			}
			sort.Strings(parts)
			st.value = strings.Join(parts, ",")
		case []any:
			if name != "admin-uids" && name != "admin-gids" {
				return fmt.Errorf("config file %s: key %q must be a string, number or boolean", path, k)
			}
			// admin_uids: [0, 1000].
			parts := make([]string, len(v))
			for i, e := range v {
				parts[i] = fmt.Sprint(e)
			}
			st.value = strings.Join(parts, ",")
		default:
			return fmt.Errorf("config file %s: key %q must be a string, number or boolean", path, k)
		}
		st.from = "file"
	}
	return nil
}

func (s *settings) str(name string) string { return s.byName[name].value }

func (s *settings) bool(name string) (bool, error) {
	v, err := strconv.ParseBool(s.str(name))
	if err != nil {
		return false, fmt.Errorf("--%s: %q is not a boolean", name, s.str(name))
	}
	return v, nil
}

// int reads an integer setting that must lie in lo..hi.
func (s *settings) int(name string, lo, hi int) (int, error) {
	v, err := strconv.Atoi(s.str(name))
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("--%s: %q is not an integer from %d to %d", name, s.str(name), lo, hi)
	}
	return v, nil
}

// durationExamples gives examples of the forms a duration setting takes
// that lie within lo..hi, so a hint never suggests a refused value.
func durationExamples(lo, hi time.Duration) string {
	var ex []string
	for _, c := range []struct {
		s string
		d time.Duration
	}{{"30d", 30 * 24 * time.Hour}, {"720h", 720 * time.Hour}, {"10m", 10 * time.Minute}, {"30s", 30 * time.Second}, {"500ms", 500 * time.Millisecond}} {
		if c.d >= lo && c.d <= hi && len(ex) < 2 {
			ex = append(ex, c.s)
		}
	}
	if len(ex) == 0 {
		return lo.String()
	}
	return strings.Join(ex, " or ")
}

// duration reads a duration setting (a Go duration, or whole days like
// 30d) that must lie in lo..hi.
func (s *settings) duration(name string, lo, hi time.Duration) (time.Duration, error) {
	v := s.str(name)
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("--%s: %q is not a duration from %v to %v (e.g. %s)", name, v, lo, hi, durationExamples(lo, hi))
	}
	t, err := time.ParseDuration(v)
	if d, ok := strings.CutSuffix(v, "d"); ok {
		n, perr := strconv.Atoi(d)
		if perr != nil || n <= 0 || n > int(hi/(24*time.Hour))+1 {
			return bad()
		}
		t, err = time.Duration(n)*24*time.Hour, nil
	}
	if err != nil || t < lo || t > hi {
		return bad()
	}
	return t, nil
}

func (s *settings) ids(name string) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.Split(s.str(name), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q is not a numeric id", name, f)
		}
		out = append(out, uint32(v))
	}
	return out, nil
}

func (s *settings) fileMode(name string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s.str(name), 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("--%s: %q is not an octal file mode from 0000 to 0777 (e.g. 0660)", name, s.str(name))
	}
	return os.FileMode(v), nil
}

// pinEnv is the environment variable that may hold the PKCS#11 user PIN.
const pinEnv = "MLSKEYD_PKCS11_PIN"

// takePINFromEnv removes MLSKEYD_PKCS11_PIN from the process environment
// (and the C library's, which the PKCS#11 module shares) and returns a
// getenv that still answers it from the value taken, so no later reader
// of the environment and no child process of a module sees the PIN. The
// kernel's copy in /proc/PID/environ, readable by the daemon's user and
// root only, is not rewritten: a PIN file is the better choice.
func takePINFromEnv(getenv func(string) string) func(string) string {
	pin := getenv(pinEnv)
	os.Unsetenv(pinEnv)
	return func(name string) string {
		if name == pinEnv {
			return pin
		}
		return getenv(name)
	}
}

// readPIN reads the PIN from a file that only its owner may read, or from
// MLSKEYD_PKCS11_PIN.
func readPIN(path string, getenv func(string) string) (string, error) {
	if path == "" {
		if pin := getenv(pinEnv); pin != "" {
			return pin, nil
		}
		return "", errors.New("no PIN: set --pkcs11-pin-file or MLSKEYD_PKCS11_PIN")
	}
	b, err := readSecretFile(path)
	if err != nil {
		return "", fmt.Errorf("PIN file: %w", err)
	}
	return string(b), nil
}

// readSecretFile reads a secret, without the trailing newline, from a
// regular file that belongs to the daemon's user (or root) and that only
// its owner may read. The file is opened without following a symbolic
// link and checked on the open descriptor, so it cannot be swapped
// between the check and the read.
func readSecretFile(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO put in the file's place must not hang the start.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; name the file itself", path)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 {
		return nil, fmt.Errorf("%s belongs to uid %d: it must belong to the daemon's user (uid %d) or root (chown %d %s)", path, st.Uid, euid, euid, path)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: it must not be readable by group or others (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}
