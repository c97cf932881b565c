package mls

// Decoding limits. RFC 9420 sizes its vectors with varints of up to 2^30
// bytes, so without a bound on entries a few megabytes of empty entries
// decode into millions of structures. Each limit lies far above what real
// groups use (docs/design.md lists them with the reasoning); a message
// over one is malformed for this implementation.
const (
	// MaxWelcomeSecrets bounds a Welcome's secrets: one entry per member
	// added by one Commit.
	MaxWelcomeSecrets = 10_000
	// MaxExtensions bounds each extension list (a LeafNode's, a
	// KeyPackage's, a GroupInfo's, a GroupContext's). There are 65,536
	// extension types; real leaves carry a handful.
	MaxExtensions = 1_000
	// MaxCapabilityEntries bounds each list of a Capabilities.
	MaxCapabilityEntries = 1_000
	// MaxCertificates bounds an X.509 credential's chain.
	MaxCertificates = 32
	// MaxPSKs bounds the PSKs of a GroupSecrets.
	MaxPSKs = 1_000
	// MaxProposals bounds a Commit's proposals (by value or reference).
	MaxProposals = 10_000
	// MaxPathNodes bounds an UpdatePath's nodes: the direct path of a
	// tree with 2^32 leaves has 32.
	MaxPathNodes = 64
	// MaxPathSecrets bounds one UpdatePathNode's encrypted path secrets:
	// one per node of the copath node's resolution.
	MaxPathSecrets = 1 << 16
)
