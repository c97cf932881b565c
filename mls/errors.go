package mls

import "errors"

// Sentinel errors. Callers match them with errors.Is; the wrapped message
// names the field or rule that failed.
var (
	// ErrMalformed is wrapped by every decoding error.
	ErrMalformed = errors.New("mls: malformed encoding")
	// ErrUnknownSuite is returned for cipher suites outside 0x0001..0x0007.
	ErrUnknownSuite = errors.New("mls: unknown cipher suite")
	// ErrUnsupportedWireFormat is returned by UnmarshalMLSMessage for wire
	// formats this package does not decode (PublicMessage, PrivateMessage,
	// and unknown values).
	ErrUnsupportedWireFormat = errors.New("mls: unsupported wire format")
	// ErrUnsupportedVersion is returned for protocol versions other than mls10.
	ErrUnsupportedVersion = errors.New("mls: unsupported protocol version")
	// ErrInvalidKeyPackage is wrapped by KeyPackage validation failures.
	ErrInvalidKeyPackage = errors.New("mls: invalid KeyPackage")
	// ErrInvalidGroupInfo is wrapped by GroupInfo validation failures.
	ErrInvalidGroupInfo = errors.New("mls: invalid GroupInfo")
	// ErrInvalidSignature is returned when a signature does not verify.
	ErrInvalidSignature = errors.New("mls: invalid signature")
	// ErrInvalidPublicKey is returned for public keys that are not valid for
	// the suite (wrong length, not on the curve, ...).
	ErrInvalidPublicKey = errors.New("mls: invalid public key")
	// ErrInvalidPrivateKey is returned when a private key handle does not fit
	// the suite (wrong curve or wrong interface).
	ErrInvalidPrivateKey = errors.New("mls: private key does not match the cipher suite")
	// ErrDecryption is returned when HPKE or AEAD decryption fails.
	ErrDecryption = errors.New("mls: decryption failed")
	// ErrInvalidParams is returned by constructors given unusable input.
	ErrInvalidParams = errors.New("mls: invalid parameters")
)
