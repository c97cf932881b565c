package main

import (
	"fmt"
	"strings"
)

// progressWidth is the bar's width in cells; with its label and count the
// line stays within 80 columns.
const progressWidth = 30

// keyPackageProgress returns the progress callback for a batch of
// KeyPackages, drawing a one-line bar on stderr, and a function that
// erases the bar again (to call before anything else is printed). Both are
// no-ops, and the callback nil so that the plain unary call is made, unless
// stderr is a terminal and --json is off: piped or logged output stays
// exactly what it was. stdout is not consulted: the bar never goes there,
// so 'keypackage create --out - > file' still shows it, as download tools
// do.
func (c *cli) keyPackageProgress() (progress func(done, total int), clear func()) {
	if c.g.json || c.stderrTerminal == nil || !c.stderrTerminal() {
		return nil, func() {}
	}
	drawn := false
	progress = func(done, total int) {
		if total <= 0 || done < 0 || done > total {
			return
		}
		fill := done * progressWidth / total
		fmt.Fprintf(c.stderr, "\rcreating KeyPackages [%s%s] %3d%%", strings.Repeat("#", fill),
			strings.Repeat(".", progressWidth-fill), done*100/total)
		drawn = true
	}
	clear = func() {
		if drawn {
			// Back to the line's start and erase it (ANSI EL).
			fmt.Fprint(c.stderr, "\r\x1b[K")
			drawn = false
		}
	}
	return progress, clear
}
