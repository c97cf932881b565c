package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// CreateKeyPackagesStream answers as CreateKeyPackages after progress
// events for three operations a KeyPackage and one for the signature key;
// with noStream set it is the daemon from before the streaming call.
func (s *fakeServer) CreateKeyPackagesStream(r *mlskeyv1.CreateKeyPackagesRequest, st grpc.ServerStreamingServer[mlskeyv1.CreateKeyPackagesEvent]) error {
	s.mu.Lock()
	s.streams++
	no := s.noStream
	s.mu.Unlock()
	if no {
		return status.Error(codes.Unimplemented, "unknown method CreateKeyPackagesStream")
	}
	resp, err := s.CreateKeyPackages(st.Context(), r)
	if err != nil {
		return err
	}
	if n := len(resp.KeyPackages); n > 0 {
		total := uint32(3*n + 1)
		for done := uint32(0); done <= total; done += 2 {
			st.Send(&mlskeyv1.CreateKeyPackagesEvent{Event: &mlskeyv1.CreateKeyPackagesEvent_Progress{
				Progress: &mlskeyv1.CreateKeyPackagesProgress{Done: done, Total: total}}})
		}
		st.Send(&mlskeyv1.CreateKeyPackagesEvent{Event: &mlskeyv1.CreateKeyPackagesEvent_Progress{
			Progress: &mlskeyv1.CreateKeyPackagesProgress{Done: total, Total: total}}})
	}
	return st.Send(&mlskeyv1.CreateKeyPackagesEvent{Event: &mlskeyv1.CreateKeyPackagesEvent_Result{Result: resp}})
}

func (s *fakeServer) streamCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// runTerminal runs mlskeyctl in-process as runCLI does, with stderr a
// terminal or not.
func runTerminal(t *testing.T, socket string, terminal bool, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{
		ctx:            context.Background(),
		stdin:          strings.NewReader(""),
		stdout:         &out,
		stderr:         &errb,
		defaultSocket:  socket,
		stderrTerminal: func() bool { return terminal },
	}
	code = c.run(args)
	return code, out.String(), errb.String()
}

// TestKeyPackageProgressBar: keypackage create and ensure draw a progress
// bar on a terminal and erase it before the result; with --json or when
// stderr is not a terminal they make the unary call and print exactly
// what they printed before. stdout is the same either way.
func TestKeyPackageProgressBar(t *testing.T) {
	fake, sock := startFake(t)
	create := []string{"keypackage", "create", "--suite", "1", "--identity", "alice", "--count", "3"}
	ensure := []string{"keypackage", "ensure", "--suite", "1", "--identity", "alice", "--target", "4"}
	for _, c := range []struct {
		args     []string
		terminal bool
		bar      bool
		stderr   string // without the bar
	}{
		{create, false, false, ""},
		{create, true, true, ""},
		{append(create, "--json"), true, false, ""},
		{ensure, false, false, "0 unused KeyPackages before, 0 created\n"},
		{ensure, true, false, "0 unused KeyPackages before, 0 created\n"}, // nothing to do: no progress
		{append(ensure, "--json"), true, false, "0 unused KeyPackages before, 0 created\n"},
	} {
		before := fake.streamCalls()
		code, stdout, stderr := runTerminal(t, sock, c.terminal, c.args...)
		_, plain, _ := runCLI(t, sock, "", c.args...)
		if code != 0 || stdout != plain {
			t.Fatalf("%q (terminal %v): exit %d, stdout %q; without a terminal %q", c.args, c.terminal, code, stdout, plain)
		}
		streamed := fake.streamCalls() > before
		if streamed != (c.terminal && !strings.Contains(strings.Join(c.args, " "), "--json")) {
			t.Errorf("%q (terminal %v): streaming call made: %v", c.args, c.terminal, streamed)
		}
		bar, rest, _ := strings.Cut(stderr, "\r\x1b[K")
		if !c.bar {
			if stderr != c.stderr {
				t.Errorf("%q (terminal %v): stderr %q, want %q", c.args, c.terminal, stderr, c.stderr)
			}
			continue
		}
		if rest != c.stderr || !strings.HasPrefix(bar, "\rcreating KeyPackages [") || !strings.HasSuffix(bar, "[##############################] 100%") {
			t.Errorf("%q on a terminal: stderr %q", c.args, stderr)
		}
	}

	// A refill that creates KeyPackages draws the bar too, and erases it
	// before its summary line.
	fake.mu.Lock()
	fake.refill = 4
	fake.mu.Unlock()
	code, _, stderr := runTerminal(t, sock, true, ensure...)
	if code != 0 || !strings.HasPrefix(stderr, "\rcreating KeyPackages [") || !strings.HasSuffix(stderr, "100%\r\x1b[K0 unused KeyPackages before, 4 created\n") {
		t.Errorf("ensure on a terminal: exit %d, stderr %q", code, stderr)
	}
	// A daemon without the streaming call gets the unary one, without a
	// bar and without an error.
	fake.mu.Lock()
	fake.refill = 0
	fake.noStream = true
	fake.mu.Unlock()
	code, stdout, stderr := runTerminal(t, sock, true, create...)
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "aa00 init=init-0") {
		t.Errorf("older daemon: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
