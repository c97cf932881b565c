// Package client is the Go client of mlskeyd, the local daemon that holds
// MLS (RFC 9420) private keys in an HSM or TPM and serves the
// mlskey.v1.KeyService gRPC API on a Unix socket.
//
// A Client embeds mlskeyv1.KeyServiceClient, so every RPC of the API is a
// method of it, and adds what MLS code wants instead of gRPC:
//
//   - SignatureKey / NewSignatureKey: a signature key with SignWithLabel,
//     its MLS public key and suite, CreateCSR (a PKCS#10 request the daemon
//     signs for the key itself) and a crypto.Signer view for X.509 work;
//   - HPKEKey: an init or leaf encryption key with DecryptWithLabel;
//   - CreateMLSKeyPackages and OpenMLSWelcome, which return mls types.
//
// For example:
//
//	c, err := client.Dial(ctx, client.DefaultSocket(), client.CallTimeout(30*time.Second))
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	key, err := c.SignatureKey(ctx, keyID)
//	...
//	sig, err := key.SignWithLabel(ctx, "FramedContentTBS", tbs)
//
// Errors from the daemon are *Error values that keep their gRPC status and
// match ErrNotFound, ErrConsumed, ErrPermissionDenied and ErrUnavailable
// with errors.Is.
//
// The connection uses no transport security: access control is the file
// mode of the socket and the peer credentials the daemon reads from it, so
// only local users the daemon's administrator allowed can connect.
// docs/clients.md shows how an MLS engine plugs this in.
package client

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	mlskeyv1 "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
)

// DefaultSocketPath is where mlskeyd listens unless configured otherwise.
const DefaultSocketPath = "/run/mlskeyd/mlskeyd.sock"

// SocketEnv names the environment variable that overrides DefaultSocketPath.
const SocketEnv = "MLSKEYD_SOCKET"

// DefaultSocket returns $MLSKEYD_SOCKET if set and not empty, else
// DefaultSocketPath.
func DefaultSocket() string {
	if s := os.Getenv(SocketEnv); s != "" {
		return s
	}
	return DefaultSocketPath
}

// maxRecvMsgSize raises gRPC's 4 MiB default for responses: a batch of 1000
// KeyPackages with X.509 credentials can exceed it.
const maxRecvMsgSize = 64 << 20

// Client is a connection to mlskeyd. Its embedded KeyServiceClient exposes
// every RPC of the API. A Client is safe for concurrent use.
type Client struct {
	mlskeyv1.KeyServiceClient
	conn *grpc.ClientConn
}

// Dial returns a Client for the daemon listening on the Unix socket at path
// socket (made absolute against the working directory).
//
// Like grpc.NewClient, Dial does not wait for the daemon: a missing or
// unreachable daemon shows up as codes.Unavailable on the first call. ctx is
// only checked for cancellation. opts are appended to the defaults
// (insecure transport credentials, a 64 MiB receive limit and TypedErrors),
// so they can override them; CallTimeout bounds calls without a deadline.
func Dial(ctx context.Context, socket string, opts ...grpc.DialOption) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if socket == "" {
		return nil, errors.New("mlskeyd client: empty socket path")
	}
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, fmt.Errorf("mlskeyd client: socket path %q: %w", socket, err)
	}
	// Build the target as a URL so that '%', '?', '#' and spaces in the
	// path survive gRPC's URL parsing.
	target := (&url.URL{Scheme: "unix", Path: abs}).String()
	all := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		TypedErrors(),
	}
	all = append(all, opts...)
	conn, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, fmt.Errorf("mlskeyd client: %w", err)
	}
	return New(conn), nil
}

// New returns a Client using an existing connection, which Close closes.
func New(conn *grpc.ClientConn) *Client {
	return &Client{KeyServiceClient: mlskeyv1.NewKeyServiceClient(conn), conn: conn}
}

// Conn returns the underlying gRPC connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sign signs SignContent{"MLS 1.0 " + label, content} with the
// signature key keyID and returns the signature in its MLS encoding (DER for
// ECDSA, R||S for EdDSA). label is given without the "MLS 1.0 " prefix, for
// example "FramedContentTBS".
func (c *Client) Sign(ctx context.Context, keyID, label string, content []byte) ([]byte, error) {
	resp, err := c.KeyServiceClient.SignWithLabel(ctx, &mlskeyv1.SignWithLabelRequest{
		KeyId:   keyID,
		Label:   label,
		Content: content,
	})
	if err != nil {
		return nil, err
	}
	return resp.GetSignature(), nil
}

// ListAllKeys pages through ListKeys with the filters of req (its page token
// is ignored and it is not modified) and returns every matching key, newest
// last. On error it returns the keys read so far with the error.
func (c *Client) ListAllKeys(ctx context.Context, req *mlskeyv1.ListKeysRequest) ([]*mlskeyv1.Key, error) {
	r := &mlskeyv1.ListKeysRequest{}
	if req != nil {
		r.Role, r.State, r.CipherSuite, r.PageSize = req.GetRole(), req.GetState(), req.GetCipherSuite(), req.GetPageSize()
		r.OwnerUid = req.OwnerUid
	}
	if r.PageSize == 0 {
		r.PageSize = 1000
	}
	var keys []*mlskeyv1.Key
	seen := map[string]bool{}
	for {
		resp, err := c.ListKeys(ctx, r)
		if err != nil {
			return keys, err
		}
		keys = append(keys, resp.GetKeys()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return keys, nil
		}
		if seen[next] {
			return keys, fmt.Errorf("mlskeyd client: ListKeys returned page token %q twice", next)
		}
		seen[next] = true
		r.PageToken = next
	}
}

var _ mlskeyv1.KeyServiceClient = (*Client)(nil)
