package pkcs11

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// p11-kit forwards a PKCS#11 token over a Unix socket: p11-kit-server
// exports a token of a provider module, and a process loading
// p11-kit-client.so with P11_KIT_SERVER_ADDRESS set sees it as its own.
// This is how a host token is handed to a container or a VM, and it
// forwards fewer mechanisms than the token offers (no mechanism
// parameters it does not know), which is what the probe must notice.

var (
	p11KitServerPaths = []string{"/usr/libexec/p11-kit/p11-kit-server", "/usr/lib/p11-kit/p11-kit-server"}
	p11KitClientPaths = []string{
		"/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
		"/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
		"/usr/lib/pkcs11/p11-kit-client.so",
	}
)

// p11KitManufacturer is what p11-kit's proxy and client modules report as
// their manufacturer in C_GetInfo.
const p11KitManufacturer = "PKCS#11 Kit"

// P11KitServerAddressEnv is the variable p11-kit-client.so reads at
// C_Initialize to find the server.
const P11KitServerAddressEnv = "P11_KIT_SERVER_ADDRESS"

func firstFile(paths []string) string {
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// FindP11Kit returns the paths of p11-kit-server and p11-kit-client.so, or
// empty strings when they are not installed (Debian: p11-kit and
// p11-kit-modules).
func FindP11Kit() (server, client string) {
	return firstFile(p11KitServerPaths), firstFile(p11KitClientPaths)
}

// P11KitServer is a p11-kit-server process exporting one token, for tests
// and experiments. It runs in its own process group: the server forks a
// child per client connection, and killing only the listener would leave
// those connections (and so the client's sessions) alive.
type P11KitServer struct {
	Socket   string // the Unix socket clients connect to
	Provider string // the exported module
	Token    string // the exported token's label
	Env      []string
	Log      string // the server's stderr

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartP11KitServer exports the token labelled token of module provider on
// the Unix socket path socket (its log goes to socket+".log"). env is added
// to the server's environment (for SoftHSM: SOFTHSM2_CONF).
//
// p11-kit-client.so reads P11_KIT_SERVER_ADDRESS once per process, when it
// is first loaded: a process that opens several forwarded tokens over time
// (a test binary) must use one socket path for all of them.
func StartP11KitServer(socket, provider, token string, env []string) (*P11KitServer, error) {
	socket, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	s := &P11KitServer{Socket: socket, Provider: provider, Token: token, Env: env, Log: socket + ".log"}
	return s, s.Start()
}

// Address is the P11_KIT_SERVER_ADDRESS value for clients.
func (s *P11KitServer) Address() string { return "unix:path=" + s.Socket }

// ClientConfig returns a Config that opens the forwarded token through
// p11-kit-client.so. The caller sets P11_KIT_SERVER_ADDRESS (Address) in
// the environment of the process that loads the client module.
func (s *P11KitServer) ClientConfig(pin string) (Config, error) {
	_, client := FindP11Kit()
	if client == "" {
		return Config{}, fmt.Errorf("pkcs11: p11-kit-client.so not found at %v (apt-get install p11-kit-modules)", p11KitClientPaths)
	}
	return Config{Module: client, TokenLabel: s.Token, PIN: pin}, nil
}

// Start starts the server (again) and waits until its socket accepts
// connections.
func (s *P11KitServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("pkcs11: p11-kit server already running")
	}
	srv, _ := FindP11Kit()
	if srv == "" {
		return fmt.Errorf("pkcs11: p11-kit-server not found at %v (apt-get install p11-kit)", p11KitServerPaths)
	}
	_ = os.Remove(s.Socket)
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(srv, "-f", "--provider", s.Provider, "-n", s.Socket, "pkcs11:token="+s.Token)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pkcs11: starting p11-kit-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", s.Socket); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(s.Log)
			return fmt.Errorf("pkcs11: p11-kit-server exited at start: %s", strings.TrimSpace(string(log)))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return errors.New("pkcs11: p11-kit-server socket did not appear within 10s")
		}
	}
	s.cmd = cmd
	return nil
}

// Kill kills the server and every connection child (the whole process
// group) with SIGKILL: to its clients the token is gone.
func (s *P11KitServer) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	s.cmd = nil
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pkcs11: killing p11-kit-server: %w", err)
	}
	// Wait for the group to be gone, so that a restart does not race the
	// dying children for the token.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(-pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
	}
	_ = os.Remove(s.Socket)
	return nil
}

// Stop is Kill, for cleanup.
func (s *P11KitServer) Stop() error { return s.Kill() }
