package main

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
)

// logOutput is the daemon's log stream: stderr while someone reads it.
// When the reader goes away (a "| tee log" ended by Ctrl-C), writes fail
// with EPIPE; from then on the log goes to the fallback file in the state
// directory, so the record of the shutdown that follows is kept. With no
// fallback yet (start-up), records are dropped: the daemon never stops
// because its log cannot be written.
type logOutput struct {
	mu       sync.Mutex
	primary  io.Writer
	fallback string   // file to continue in; "" while unknown
	file     *os.File // the opened fallback
	broken   bool     // primary failed for good
}

func (o *logOutput) setFallback(path string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fallback = path
}

func (o *logOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.broken {
		n, err := o.primary.Write(p)
		if err == nil || !gone(err) {
			return n, err
		}
		o.broken = true
	}
	if o.file == nil && o.fallback != "" {
		f, err := os.OpenFile(o.fallback, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			o.fallback = "" // tried once; do not retry on every record
			return len(p), nil
		}
		o.file = f
	}
	if o.file == nil {
		return len(p), nil
	}
	o.file.Write(p) // a full disk must not stop the daemon either
	return len(p), nil
}

// gone reports whether err means nobody will ever read the stream again.
func gone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EBADF)
}
