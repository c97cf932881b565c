package tpm

import (
	"encoding/binary"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTPM answers the first n commands with rc, then with success.
type fakeTPM struct {
	rc    uint32
	n     int
	calls atomic.Int64
}

func response(rc uint32) []byte {
	rsp := make([]byte, 10)
	binary.BigEndian.PutUint16(rsp[0:], 0x8001) // TPM_ST_NO_SESSIONS
	binary.BigEndian.PutUint32(rsp[2:], 10)
	binary.BigEndian.PutUint32(rsp[6:], rc)
	return rsp
}

func (f *fakeTPM) Send([]byte) ([]byte, error) {
	if int(f.calls.Add(1)) <= f.n {
		return response(f.rc), nil
	}
	return response(0), nil
}

func TestRetryTransport(t *testing.T) {
	for _, rc := range []uint32{rcRetry, rcYielded, rcTesting} {
		f := &fakeTPM{rc: rc, n: 2}
		r := newRetryTPM(f)
		rsp, err := r.Send([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
		if err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint32(rsp[6:]); got != 0 {
			t.Fatalf("rc 0x%x: final response code 0x%x, want success", rc, got)
		}
		if f.calls.Load() != 3 || r.retried.Load() != 2 {
			t.Fatalf("rc 0x%x: %d sends, %d retries", rc, f.calls.Load(), r.retried.Load())
		}
	}
	// It gives up after its attempts and returns the TPM's answer.
	f := &fakeTPM{rc: rcRetry, n: 100}
	r := newRetryTPM(f)
	r.sleep = func(time.Duration) {}
	rsp, _ := r.Send(nil)
	if got := binary.BigEndian.Uint32(rsp[6:]); got != rcRetry || f.calls.Load() != int64(r.attempts) {
		t.Fatalf("rc 0x%x after %d sends", got, f.calls.Load())
	}
	// Other errors are not retried.
	f = &fakeTPM{rc: 0x902, n: 1} // TPM_RC_OBJECT_MEMORY
	rsp, _ = newRetryTPM(f).Send(nil)
	if binary.BigEndian.Uint32(rsp[6:]) != 0x902 || f.calls.Load() != 1 {
		t.Fatal("TPM_RC_OBJECT_MEMORY was retried")
	}
}

// TestStreamTransport: a response that arrives in pieces is read whole.
func TestStreamTransport(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		cmd := make([]byte, 12)
		if _, err := server.Read(cmd); err != nil {
			return
		}
		rsp := append(response(0), []byte("0123456789abcdef")...)
		binary.BigEndian.PutUint32(rsp[2:], uint32(len(rsp)))
		for i := 0; i < len(rsp); i += 3 {
			server.Write(rsp[i:min(i+3, len(rsp))])
			time.Sleep(time.Millisecond)
		}
	}()
	s := &streamTPM{conn: client}
	rsp, err := s.Send(make([]byte, 12))
	if err != nil {
		t.Fatal(err)
	}
	if len(rsp) != 26 || string(rsp[10:]) != "0123456789abcdef" {
		t.Fatalf("response %q", rsp)
	}
	if _, err := s.Send(make([]byte, 12)); err == nil {
		t.Fatal("Send on a closed stream succeeded")
	}
	if _, err := s.Send(make([]byte, 12)); err == nil {
		t.Fatal("Send after an error succeeded")
	}
}
