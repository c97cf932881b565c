package server

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPeerHelperProcess is not a test: it is the child process of the
// tests below, connecting to the socket named in its environment.
func TestPeerHelperProcess(t *testing.T) {
	path := os.Getenv("MLSKEYD_TEST_PEER_SOCKET")
	if path == "" {
		return
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		os.Exit(2)
	}
	// Drop the supplementary groups the connection was made with, as a
	// process could before the daemon gets to it.
	if os.Getenv("MLSKEYD_TEST_PEER_SETGROUPS") != "" {
		if err := syscall.Setgroups([]int{4243}); err != nil {
			os.Exit(3)
		}
	}
	os.Stdout.WriteString("connected\n")
	if os.Getenv("MLSKEYD_TEST_PEER_WAIT") != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	_ = c
	os.Exit(0)
}

// peerChild starts a process that connects to a new socket, and returns
// the server end of its connection once it said it is connected.
func peerChild(t *testing.T, cmdMod func(*exec.Cmd)) (*exec.Cmd, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cmd := exec.Command(os.Args[0], "-test.run=^TestPeerHelperProcess$")
	cmd.Env = append(os.Environ(), "MLSKEYD_TEST_PEER_SOCKET="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if cmdMod != nil {
		cmdMod(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "connected\n" {
		t.Fatalf("child: %q %v", line, err)
	}
	c, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return cmd, c
}

// holdStdin keeps a waiting child running until the test ends.
func holdStdin(t *testing.T, cmd *exec.Cmd) {
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
}

// A process that connects and exits before the daemon reads its
// credentials must not pass for alive: its PID could be reused by any
// process, an admin's included. Before SO_PEERPIDFD a zombie's /proc
// entry (same PID, same start time) made it look alive.
func TestPeerExitedBeforeHandshakeRefused(t *testing.T) {
	cmd, c := peerChild(t, nil)
	// Wait until the child has exited, without reaping it.
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	_, info, err := PeerCredentials{}.ServerHandshake(c)
	if err == nil && info.(PeerInfo).Alive() {
		t.Fatal("a connection whose process has exited passed for alive")
	}
}

func TestPeerAliveUntilExit(t *testing.T) {
	cmd, c := peerChild(t, func(cmd *exec.Cmd) {
		cmd.Env = append(cmd.Env, "MLSKEYD_TEST_PEER_WAIT=1")
		holdStdin(t, cmd)
	})
	conn, ai, err := PeerCredentials{}.ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	info := ai.(PeerInfo)
	if int(info.PID) != cmd.Process.Pid || info.UID != uint32(os.Getuid()) {
		t.Fatalf("peer %+v, want pid %d", info, cmd.Process.Pid)
	}
	if !info.Alive() {
		t.Fatal("a running peer is not alive")
	}
	cmd.Process.Kill()
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if info.Alive() {
		t.Fatal("a killed (zombie) peer is alive")
	}
	conn.Close()
	if info.Alive() {
		t.Fatal("alive after the connection closed")
	}
}

// Supplementary groups are those the process had when it connected
// (SO_PEERGROUPS), not whatever /proc says later.
func TestPeerGroupsFromConnectTime(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process with chosen groups")
	}
	_, c := peerChild(t, func(cmd *exec.Cmd) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{4242}}}
		cmd.Env = append(cmd.Env, "MLSKEYD_TEST_PEER_SETGROUPS=1", "MLSKEYD_TEST_PEER_WAIT=1")
		holdStdin(t, cmd)
	})
	_, ai, err := PeerCredentials{}.ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	if g := ai.(PeerInfo).Groups; !slices.Equal(g, []uint32{4242}) {
		t.Fatalf("groups %v, want those at connect time [4242]", g)
	}
}
