// Package version holds the one version string of mlskeyd and mlskeyctl, so
// the two binaries of one build never disagree about what they are.
package version

import "runtime/debug"

// Version is set at build time with
//
//	-ldflags "-X github.com/mlskeyd/mlskeyd/internal/version.Version=v1.2.3"
//
// Empty means the module version from the build information.
var Version = ""

// String returns Version, else the main module's version when the binary
// was built from a module (go install …@v1.2.3), else "(devel)".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
