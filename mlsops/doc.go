// Package mlsops is the MLS operations on device keys, below the gRPC
// layer: making KeyPackages, opening a Welcome, signing with a label (and
// the strict-content check that may precede it). server/ calls it after
// authenticating, authorising and validating a request; tests and
// `mlskeyd bench` call it in-process, on the same code path minus RPC.
//
// It knows the keystore and mls, nothing of gRPC, callers or audit. Errors
// are keystore and mls errors; a FieldError names the request field a
// failure belongs to, so the server can say so.
package mlsops
