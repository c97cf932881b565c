package server

import (
	"net"
	"path/filepath"
	"testing"

	"golang.org/x/net/http2"
)

// The daemon's gRPC server announces MAX_CONCURRENT_STREAMS in its HTTP/2
// settings, so a client runs at most MaxStreamsPerConn calls on one
// connection and queues the rest.
func TestMaxStreamsPerConnection(t *testing.T) {
	e := env(t)
	gs, _ := NewGRPCServer(e.svc, nil, nil)
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	defer gs.Stop()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		v, ok := sf.Value(http2.SettingMaxConcurrentStreams)
		if !ok || v != MaxStreamsPerConn {
			t.Fatalf("MAX_CONCURRENT_STREAMS %d (set: %v), want %d", v, ok, MaxStreamsPerConn)
		}
		return
	}
}
