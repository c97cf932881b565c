package tpm

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenDeviceSaysWhatIsMissing: a device that is not there is named
// with what to use instead, not left as a bare stat or dial error.
func TestOpenDeviceSaysWhatIsMissing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(refused)
	sock := filepath.Join(t.TempDir(), "swtpm.sock")
	for dev, want := range map[string]string{
		"/nonexistent/tpmrm0": "no TPM at /nonexistent/tpmrm0: this machine has none or its driver is not loaded (",
		"tcp://" + refused:    "(is swtpm running with --server type=tcp,port=" + port + "?)",
		"unix://" + sock:      "(is swtpm running with --server type=unixio,path=" + sock + "?)",
	} {
		_, _, _, err := openDevice(dev, nil, time.Now().Add(5*time.Second))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line with %q", dev, err, want)
		}
	}
}
