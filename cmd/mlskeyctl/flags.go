package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mlskeyd/mlskeyd/internal/suggest"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// globals are the flags every command accepts, before or after its name.
type globals struct {
	socket  string
	json    bool
	timeout time.Duration
}

var globalNames = map[string]bool{"socket": true, "json": true, "timeout": true}

// newFlagSet returns a FlagSet for the command name ("key list"; "" for the
// global flags alone) with the global flags registered, and with the global
// flags given before the command already applied. synopsis follows the
// command name in the usage line; help is printed under it; register adds the
// command's own flags.
func (c *cli) newFlagSet(name, synopsis, help string, register func(*flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by report, help by Usage
	if register != nil {
		register(fs)
	}
	fs.StringVar(&c.g.socket, "socket", c.defaultSocket, "mlskeyd's Unix socket `path`; $MLSKEYD_SOCKET sets the default")
	fs.BoolVar(&c.g.json, "json", false, "print JSON instead of text")
	fs.DurationVar(&c.g.timeout, "timeout", defaultTimeout, "give up after `duration`; 0 waits forever (keypackage create: 30s\nplus 1s per KeyPackage unless given)")
	for n, v := range c.topSet {
		fs.Set(n, v)
	}
	// flag calls Usage on every parse error; flagError prints it on
	// --help only.
	fs.Usage = func() {}
	c.usage[fs] = func() {
		fmt.Fprintf(c.stdout, "Usage: %s\n", strings.Join(strings.Fields("mlskeyctl "+name+" "+synopsis), " "))
		if help != "" {
			fmt.Fprintf(c.stdout, "\n%s\n", help)
		}
		if register != nil {
			printFlags(c.stdout, fs, "Flags")
		}
		printFlags(c.stdout, fs, "Global flags")
	}
	return fs
}

// printFlags prints the command's flags, or the global ones when title is
// "Global flags", with their usage.
func printFlags(w io.Writer, fs *flag.FlagSet, title string) {
	wantGlobal := title == "Global flags"
	fmt.Fprintf(w, "\n%s:\n", title)
	fs.VisitAll(func(f *flag.Flag) {
		if globalNames[f.Name] != wantGlobal {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintf(w, "%s\n      %s", line, strings.ReplaceAll(usage, "\n", "\n      "))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// parse parses args, flags and positional arguments interleaved ("key show
// ID --json"); "--" ends the flags. It prints the usage on --help.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	pos := []string{}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, c.flagError(fs, err)
		}
		if err := c.checkGlobals(fs); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// checkGlobals refuses global flag values out of range.
func (c *cli) checkGlobals(fs *flag.FlagSet) error {
	if c.g.timeout < 0 {
		return c.flagError(fs, fmt.Errorf("invalid value %q for flag -timeout: want 0 (no limit) or a positive duration like 30s or 5m", c.g.timeout))
	}
	return nil
}

// timeoutGiven reports whether --timeout was set on the command line,
// before or after the command.
func (c *cli) timeoutGiven(fs *flag.FlagSet) bool {
	_, given := c.topSet["timeout"]
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "timeout" })
	return given
}

// parseNoArgs parses a command line that takes no positional argument.
func (c *cli) parseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf("%s: unexpected argument %q", fs.Name(), pos[0])
	}
	return nil
}

// parseID parses a command line with exactly one positional argument, a key
// id.
func (c *cli) parseID(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := c.parse(fs, args)
	if err != nil {
		return "", err
	}
	switch {
	case len(pos) == 0:
		return "", usageErrorf("%s: missing key ID", fs.Name())
	case len(pos) > 1:
		return "", usageErrorf("%s: unexpected argument %q", fs.Name(), pos[1])
	case pos[0] == "":
		return "", usageErrorf("%s: empty key ID", fs.Name())
	}
	return pos[0], nil
}

func (c *cli) flagError(fs *flag.FlagSet, err error) error {
	if err == flag.ErrHelp {
		c.usage[fs]()
		return errHelp
	}
	if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
		name = strings.TrimLeft(name, "-")
		msg := "unknown flag --" + name
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		if near := suggest.Nearest(name, names); near != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", near)
		}
		help := "mlskeyctl --help"
		if fs.Name() != "" {
			msg = fs.Name() + ": " + msg
			help = "mlskeyctl " + fs.Name() + " --help"
		}
		return usageErrorf("%s; see '%s'", msg, help)
	}
	// The flag package names flags with one dash; this help uses two.
	msg := strings.NewReplacer("flag -", "flag --", ": -", ": --").Replace(err.Error())
	if name := fs.Name(); name != "" {
		msg = name + ": " + msg
	}
	return usageErrorf("%s", msg)
}

// suiteFlag is a --suite flag: a number (1, 0x0001) or an RFC 9420 name.
type suiteFlag uint32

func (s *suiteFlag) String() string {
	if *s == 0 {
		return ""
	}
	return fmt.Sprint(uint32(*s))
}

func (s *suiteFlag) Set(v string) error {
	id, err := parseSuite(v)
	if err != nil {
		return err
	}
	*s = suiteFlag(id)
	return nil
}

// roleFlag is a --role flag.
type roleFlag mlskeyv1.KeyRole

func (r *roleFlag) String() string {
	if *r == 0 {
		return ""
	}
	return roleName(mlskeyv1.KeyRole(*r))
}

func (r *roleFlag) Set(v string) error {
	for _, role := range []mlskeyv1.KeyRole{
		mlskeyv1.KeyRole_KEY_ROLE_SIGNATURE,
		mlskeyv1.KeyRole_KEY_ROLE_INIT,
		mlskeyv1.KeyRole_KEY_ROLE_LEAF_ENCRYPTION,
	} {
		if strings.EqualFold(strings.ReplaceAll(v, "_", "-"), roleName(role)) {
			*r = roleFlag(role)
			return nil
		}
	}
	return fmt.Errorf("unknown role (want signature, init or leaf-encryption)")
}

// stateFlag is a --state flag.
type stateFlag mlskeyv1.KeyState

func (s *stateFlag) String() string {
	if *s == 0 {
		return ""
	}
	return stateName(mlskeyv1.KeyState(*s))
}

func (s *stateFlag) Set(v string) error {
	for _, st := range []mlskeyv1.KeyState{
		mlskeyv1.KeyState_KEY_STATE_ACTIVE,
		mlskeyv1.KeyState_KEY_STATE_CONSUMED,
		mlskeyv1.KeyState_KEY_STATE_DESTROYED,
		mlskeyv1.KeyState_KEY_STATE_MISSING,
	} {
		if strings.EqualFold(v, stateName(st)) {
			*s = stateFlag(st)
			return nil
		}
	}
	return fmt.Errorf("unknown state (want active, consumed, destroyed or missing)")
}

// lifetimeFlag is a --lifetime flag, parsed by parseLifetime.
type lifetimeFlag time.Duration

func (l *lifetimeFlag) String() string {
	if *l == 0 {
		return ""
	}
	return time.Duration(*l).String()
}

// minLifetime is the daemon's shortest KeyPackage lifetime
// (server.MinKeyPackageLifetime); checked here too so a typo is refused
// before anything is sent.
const minLifetime = time.Hour

func (l *lifetimeFlag) Set(v string) error {
	d, err := parseLifetime(v)
	if err != nil {
		return err
	}
	if d < minLifetime {
		return fmt.Errorf("%q is under the minimum of 1h (valid: 1h up to the daemon's maximum, 365d unless configured)", v)
	}
	*l = lifetimeFlag(d)
	return nil
}
