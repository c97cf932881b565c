package keystore

import (
	"fmt"
	"strings"
)

// maxCauses is how many distinct causes a batch error names. A device that
// fails mid-batch fails every remaining generation the same way, and an
// error that repeats one cause hundreds of times tells less than one that
// counts them.
const maxCauses = 3

// batchError aggregates the failures of a batch: how many of how many
// failed, and the first distinct causes. errors.Is and errors.As see the
// causes it names, so a device failure is still a *DeviceError.
type batchError struct {
	failed, total int
	causes        []error
	more          int // distinct causes beyond maxCauses
}

func (e *batchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d key generations failed: ", e.failed, e.total)
	for i, c := range e.causes {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(c.Error())
	}
	if e.more > 0 {
		fmt.Fprintf(&b, " (and %d more distinct causes)", e.more)
	}
	return b.String()
}

func (e *batchError) Unwrap() []error { return e.causes }

// aggregate returns nil if errs holds no error, the error itself if it
// holds one, and else a batchError over total operations.
func aggregate(errs []error, total int) error {
	var first error
	failed := 0
	seen := map[string]bool{}
	e := &batchError{total: total}
	for _, err := range errs {
		if err == nil {
			continue
		}
		failed++
		if first == nil {
			first = err
		}
		msg := err.Error()
		if seen[msg] {
			continue
		}
		seen[msg] = true
		if len(e.causes) < maxCauses {
			e.causes = append(e.causes, err)
		} else {
			e.more++
		}
	}
	switch failed {
	case 0:
		return nil
	case 1:
		return first
	}
	e.failed = failed
	return e
}
