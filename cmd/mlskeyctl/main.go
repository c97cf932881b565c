// Command mlskeyctl is the command-line client of mlskeyd, the daemon that
// holds MLS (RFC 9420) private keys in an HSM or TPM.
//
// Usage:
//
//	mlskeyctl [global flags] <command> [flags] [args]
//
// Run "mlskeyctl --help" for the commands and "mlskeyctl <command> --help"
// for the flags of one. Global flags (--socket, --json, --timeout) may be
// given before or after the command. Errors are reported as one line
// "mlskeyctl: <message>" on stderr with exit status 1, or 2 for usage
// errors.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/client"
)

// version is the version of mlskeyctl, set at build time with
// -ldflags "-X main.version=v1.2.3". Empty means the module version from the
// build information.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	c := &cli{
		ctx:           ctx,
		stdin:         os.Stdin,
		stdout:        os.Stdout,
		stderr:        os.Stderr,
		defaultSocket: client.DefaultSocket(),
	}
	code := c.run(os.Args[1:])
	stop()
	os.Exit(code)
}

// cli is one invocation of mlskeyctl.
type cli struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
	defaultSocket  string // the --socket default

	g globals
	// topSet holds the global flags given before the command, to carry
	// them into the command's FlagSet.
	topSet map[string]string
	// usage prints the help of a FlagSet made by newFlagSet.
	usage map[*flag.FlagSet]func()
}

// run runs the command line args (without the program name) and returns the
// exit status.
func (c *cli) run(args []string) int {
	c.usage = map[*flag.FlagSet]func(){}
	top := c.newFlagSet("", "[global flags] <command> [flags] [args]", topHelp, nil)
	pos, err := c.parseTop(top, args)
	if err == nil {
		c.recordTop(top)
		if len(pos) == 0 {
			err = usageErrorf("missing command; run 'mlskeyctl --help' for the list")
		} else {
			err = c.dispatch(pos[0], pos[1:])
		}
	}
	return c.report(err)
}

// recordTop records the global flags set in top for the command's FlagSet.
func (c *cli) recordTop(top *flag.FlagSet) {
	c.topSet = map[string]string{}
	top.Visit(func(f *flag.Flag) { c.topSet[f.Name] = f.Value.String() })
}

// parseTop parses the global flags before the command, stopping at the
// command name.
func (c *cli) parseTop(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, c.flagError(fs, err)
	}
	return fs.Args(), nil
}

const topHelp = `mlskeyctl talks to mlskeyd, the daemon holding MLS (RFC 9420) private keys
in an HSM or TPM.

Commands:
  status              show the daemon's backend, device and cipher suites
  key create          create a signature key
  key list            list keys
  key show ID         show a key
  key delete ID       delete a key (destroys its private key)
  key attest ID       get and verify the device's evidence for a key (TPM)
  attest verify       verify 'key attest --json' evidence without the daemon
  audit verify FILE   verify the audit log's hash chain without the daemon
  sign                sign content with a signature key (SignWithLabel)
  keypackage create   create KeyPackages
  keypackage list     list KeyPackages and count the unused ones
  keypackage ensure   refill the stock of unused KeyPackages (--target, --min)
  keypackage delete REF
                      delete an unused KeyPackage
  welcome open        open a Welcome with one of the daemon's init keys
  sample framed-content
                      print a FramedContentTBS to try 'sign' with
  bench               measure an operation through the daemon (--op, --suite)
  version             print mlskeyctl's version

Run 'mlskeyctl <command> --help' for a command's flags.`

type group struct {
	help string
	cmds map[string]func(*cli, []string) error
}

var groups = map[string]group{
	"key": {`Commands:
  create   create a signature key
  list     list keys
  show     show a key
  delete   delete a key (destroys its private key)
  attest   get and verify the device's evidence for a key (TPM)`, map[string]func(*cli, []string) error{
		"create": (*cli).keyCreate,
		"list":   (*cli).keyList,
		"show":   (*cli).keyShow,
		"delete": (*cli).keyDelete,
		"attest": (*cli).keyAttest,
	}},
	"audit": {`Commands:
  verify   verify the audit log's hash chain without the daemon`, map[string]func(*cli, []string) error{
		"verify": (*cli).auditVerify,
	}},
	"attest": {`Commands:
  verify   verify 'mlskeyctl key attest --json' evidence without the daemon`, map[string]func(*cli, []string) error{
		"verify": (*cli).attestVerify,
	}},
	"keypackage": {`Commands:
  create   create KeyPackages
  list     list KeyPackages and count the unused ones
  ensure   refill the stock of unused KeyPackages
  delete   delete an unused KeyPackage by its ref`, map[string]func(*cli, []string) error{
		"create": (*cli).keyPackageCreate,
		"list":   (*cli).keyPackageList,
		"ensure": (*cli).keyPackageEnsure,
		"delete": (*cli).keyPackageDelete,
	}},
	"welcome": {`Commands:
  open     open a Welcome with one of the daemon's init keys`, map[string]func(*cli, []string) error{
		"open": (*cli).welcomeOpen,
	}},
}

func (c *cli) dispatch(name string, args []string) error {
	switch name {
	case "status":
		return c.status(args)
	case "sign":
		return c.sign(args)
	case "bench":
		return c.bench(args)
	case "version":
		return c.version(args)
	case "help":
		if len(args) == 0 {
			return c.dispatch("--help", nil)
		}
		return c.dispatch(args[0], append(args[1:len(args):len(args)], "--help"))
	case "-h", "-help", "--help":
		fs := c.newFlagSet("", "[global flags] <command> [flags] [args]", topHelp, nil)
		c.usage[fs]()
		return errHelp
	}
	g, ok := groups[name]
	if !ok {
		return usageErrorf("unknown command %q; run 'mlskeyctl --help' for the list", name)
	}
	if len(args) == 0 {
		return usageErrorf("%s: missing subcommand; run 'mlskeyctl %s --help' for the list", name, name)
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(c.stdout, "Usage: mlskeyctl %s <command> [flags] [args]\n\n%s\n", name, g.help)
		return errHelp
	}
	cmd, ok := g.cmds[args[0]]
	if !ok {
		return usageErrorf("%s: unknown subcommand %q; run 'mlskeyctl %s --help' for the list", name, args[0], name)
	}
	return cmd(c, args[1:])
}

// errHelp reports that help was printed: exit status 0.
var errHelp = errors.New("help printed")

// usageError is an error in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{fmt.Sprintf(format, a...)}
}

// report prints err, if any, as one line on stderr and returns the exit
// status.
func (c *cli) report(err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(c.stderr, "mlskeyctl: %s\n", errorLine(err))
	var u *usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// errorLine formats err on one line; gRPC errors as "<code in words>:
// <message>", like "not found: key "abc" not found".
func errorLine(err error) string {
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = codeWords(s.Code()) + ": " + s.Message()
	}
	return strings.Join(strings.Fields(msg), " ")
}

// codeWords turns a gRPC code name into lower case words: NotFound → "not
// found".
func codeWords(code codes.Code) string {
	var b strings.Builder
	for i, r := range code.String() {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte(' ')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// withClient checks the socket, connects, and runs fn with a context bounded
// by --timeout (0 means none).
func (c *cli) withClient(fn func(context.Context, *client.Client) error) error {
	sock := c.g.socket
	fi, err := os.Stat(sock)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot reach mlskeyd at %s: %v (is it running? see --socket and %s)", sock, err, client.SocketEnv)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("cannot reach mlskeyd at %s: not a socket (see --socket and %s)", sock, client.SocketEnv)
	}
	ctx, cancel := c.ctx, context.CancelFunc(func() {})
	if c.g.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, c.g.timeout)
	}
	defer cancel()
	cl, err := client.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer cl.Close()
	err = fn(ctx, cl)
	if status.Code(err) == codes.DeadlineExceeded && c.g.timeout > 0 {
		// The daemon gets the deadline too and may give up a little
		// before the client does.
		if deadline, _ := ctx.Deadline(); time.Until(deadline) < time.Second {
			return status.Errorf(codes.DeadlineExceeded, "no answer from mlskeyd at %s within %v (see --timeout)", sock, c.g.timeout)
		}
	}
	return err
}

func (c *cli) version(args []string) error {
	fs := c.newFlagSet("version", "", "Print mlskeyctl's version. It does not contact the daemon: 'mlskeyctl status'\nshows the daemon's.", nil)
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	v := versionString()
	if c.g.json {
		return c.writeJSON(struct {
			Version string `json:"version"`
		}{v})
	}
	_, err := fmt.Fprintf(c.stdout, "mlskeyctl %s\n", v)
	return err
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
