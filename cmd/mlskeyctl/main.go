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
// "mlskeyctl: <message>" on stderr (with --json, one JSON object
// {"error": {"code", "field", "message"}}) with exit status 1, 2 for usage
// errors, or 128+N when signal N (Ctrl-C: 130) ended the command.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlskeyd/mlskeyd/client"
	"github.com/mlskeyd/mlskeyd/internal/version"
	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

func main() {
	// Ctrl-C cancels the call in progress; the exit status then says
	// which signal ended mlskeyctl (130 for SIGINT), as shells expect.
	ctx, cancel := context.WithCancel(context.Background())
	var got atomic.Int32
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		got.Store(int32(s.(syscall.Signal)))
		cancel()
	}()
	c := &cli{
		ctx:            ctx,
		stdin:          os.Stdin,
		stdout:         os.Stdout,
		stderr:         os.Stderr,
		defaultSocket:  client.DefaultSocket(),
		interrupted:    func() syscall.Signal { return syscall.Signal(got.Load()) },
		isTerminal:     func() bool { return isTerminal(os.Stdin) },
		stderrTerminal: func() bool { return isTerminal(os.Stderr) },
	}
	code := c.run(os.Args[1:])
	signal.Stop(sigs)
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
	// interrupted returns the signal that cancelled ctx, or 0.
	interrupted func() syscall.Signal
	// isTerminal reports whether stdin is a terminal a user answers on.
	isTerminal func() bool
	// stderrTerminal reports whether stderr is a terminal, where progress
	// bars are drawn; nil means it is not.
	stderrTerminal func() bool
	// jsonArg is set when --json is among the arguments.
	jsonArg bool
	// unsure, when set by a command, is told the user when the call may
	// have been carried out without the answer arriving (timeout, Ctrl-C).
	unsure string
}

// run runs the command line args (without the program name) and returns the
// exit status.
func (c *cli) run(args []string) int {
	c.usage = map[*flag.FlagSet]func(){}
	top := c.newFlagSet("", "[global flags] <command> [flags] [args]", topHelp, nil)
	pos, err := c.parseTop(top, args)
	// A usage error may stop parsing before --json is reached; it is
	// still reported in JSON.
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--json" || a == "-json" || a == "--json=true" || a == "-json=true" {
			c.jsonArg = true
		}
	}
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
	if err := c.checkGlobals(fs); err != nil {
		return nil, err
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
  key csr ID          have a signature key sign an X.509 request for itself
  attest verify       verify 'key attest --json' evidence without the daemon
  audit verify FILE   verify the audit log's hash chain without the daemon
  sign                sign content with a signature key (SignWithLabel)
  decrypt             decrypt with a leaf encryption key (DecryptWithLabel)
  keypackage create   create KeyPackages
  keypackage list     list KeyPackages and count the unused ones
  keypackage ensure   refill the stock of unused KeyPackages (--target, --min)
  keypackage delete REF
                      delete an unused KeyPackage
  welcome open        open a Welcome with one of the daemon's init keys
  sample framed-content
                      print a FramedContentTBS to try 'sign' with
  bench               measure an operation through the daemon (--op, --suite)
  repair              act on quarantined keys: destroy strays, retire missing keys (admins)
  version             print the version of mlskeyctl and of the daemon

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
  attest   get and verify the device's evidence for a key (TPM)
  csr      have a signature key sign an X.509 request (PKCS#10) for itself`, map[string]func(*cli, []string) error{
		"create": (*cli).keyCreate,
		"list":   (*cli).keyList,
		"show":   (*cli).keyShow,
		"delete": (*cli).keyDelete,
		"attest": (*cli).keyAttest,
		"csr":    (*cli).keyCSR,
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
	case "decrypt":
		return c.decrypt(args)
	case "repair":
		return c.repair(args)
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

// report prints err, if any, as one line on stderr (a JSON object with
// --json) and returns the exit status: 2 for usage errors, 128+signal when
// a signal ended the command, else 1.
func (c *cli) report(err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	exit := 1
	var u *usageError
	if errors.As(err, &u) {
		exit = 2
	}
	if c.interrupted != nil {
		if sig := c.interrupted(); sig != 0 {
			msg := "interrupted"
			if c.unsure != "" {
				msg += ": " + c.unsure
			}
			err, exit = &localError{code: "canceled", msg: msg}, 128+int(sig)
		}
	}
	if c.g.json || c.jsonArg {
		j := errorJSON(err)
		b, _ := json.Marshal(j)
		fmt.Fprintf(c.stderr, "%s\n", b)
		return exit
	}
	fmt.Fprintf(c.stderr, "mlskeyctl: %s\n", errorLine(err))
	return exit
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
// by --timeout (0 means none). Failures to reach the daemon come back as one
// line saying why, with a hint.
func (c *cli) withClient(fn func(context.Context, *client.Client) error) error {
	sock := c.g.socket
	fi, err := os.Stat(sock)
	if err != nil {
		return connectError(sock, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return connectError(sock, syscall.ENOTSOCK)
	}
	abs, err := filepath.Abs(sock)
	if err != nil {
		return connectError(sock, err)
	}
	ctx, cancel := c.ctx, context.CancelFunc(func() {})
	if c.g.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, c.g.timeout)
	}
	defer cancel()
	// gRPC reports a failed connect as UNAVAILABLE with its own transport
	// text; the dialer keeps the system's error to say what happened.
	var dialMu sync.Mutex
	var dialErr error
	connected := false
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", abs)
		dialMu.Lock()
		dialErr = err
		connected = connected || err == nil
		dialMu.Unlock()
		return conn, err
	}
	cl, err := client.Dial(ctx, sock, grpc.WithContextDialer(dialer))
	if err != nil {
		return err
	}
	defer cl.Close()
	err = fn(ctx, cl)
	dialMu.Lock()
	de, wasConnected := dialErr, connected
	dialMu.Unlock()
	switch code := status.Code(err); {
	case code == codes.Unavailable && de != nil && !wasConnected:
		return connectError(sock, de)
	case code == codes.Unavailable && isTransportError(err):
		// Connected, then the connection went: the daemon stopped or
		// crashed mid-call.
		msg := fmt.Sprintf("lost the connection to mlskeyd at %s: it stopped or restarted (see its log)", sock)
		if c.unsure != "" {
			msg += "; " + c.unsure
		}
		return &localError{code: "unavailable", msg: msg}
	case code == codes.DeadlineExceeded && c.g.timeout > 0:
		// The daemon gets the deadline too and may give up a little
		// before the client does.
		if deadline, _ := ctx.Deadline(); time.Until(deadline) < time.Second {
			msg := fmt.Sprintf("no answer from mlskeyd at %s within %v (see --timeout)", sock, c.g.timeout)
			if c.unsure != "" {
				msg += "; " + c.unsure
			}
			return status.Error(codes.DeadlineExceeded, msg)
		}
	}
	return err
}

func (c *cli) version(args []string) error {
	fs := c.newFlagSet("version", "", `Print mlskeyctl's version and, when the daemon answers within the
--timeout (at most 2s here), mlskeyd's. Both binaries of one build print the
same version.`, nil)
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	v := version.String()
	// The daemon's version is a bonus: without a daemon this still
	// succeeds.
	var daemon string
	if c.g.timeout == 0 || c.g.timeout > 2*time.Second {
		c.g.timeout = 2 * time.Second
	}
	c.withClient(func(ctx context.Context, cl *client.Client) error {
		info, err := cl.GetInfo(ctx, &mlskeyv1.GetInfoRequest{})
		daemon = info.GetVersion()
		return err
	})
	if c.g.json {
		return c.writeJSON(struct {
			Version       string `json:"version"`
			DaemonVersion string `json:"daemon_version,omitempty"`
		}{v, daemon})
	}
	if _, err := fmt.Fprintf(c.stdout, "mlskeyctl %s\n", v); err != nil {
		return err
	}
	if daemon != "" {
		_, err := fmt.Fprintf(c.stdout, "mlskeyd %s (at %s)\n", daemon, c.g.socket)
		return err
	}
	return nil
}
