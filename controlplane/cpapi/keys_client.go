package cpapi

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"time"
)

// Key service calls of Client. Operator calls need a token with the role
// named on each; agent calls (KeyMessages, VerifyingKey) need the agent's
// client certificate. While the service is sealed, key operations fail
// with an *APIError of status 503 that unwraps to ErrSealed.

var clientKeyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// checkKeyName refuses a key name the server would refuse anyway, before
// it goes into a request path.
func checkKeyName(name string) error {
	if !clientKeyNameRE.MatchString(name) {
		return fmt.Errorf("controlplane: client: %w: key name %q must be 1..128 characters of letters, digits, '.', '_', '-', starting with a letter or digit", ErrBadRequest, name)
	}
	return nil
}

// KeyStatus reports whether the key service is sealed and how many shares
// were given (viewer).
func (c *Client) KeyStatus(ctx context.Context) (KeyServiceStatus, error) {
	var st KeyServiceStatus
	err := c.do(ctx, "GET", "/v1/keys/status", nil, nil, &st)
	return st, err
}

// Unseal gives one root key share in its text form (admin). The answer
// says how many shares are in and whether the service is unsealed.
func (c *Client) Unseal(ctx context.Context, share string) (KeyServiceStatus, error) {
	var st KeyServiceStatus
	err := c.do(ctx, "POST", "/v1/keys/unseal", nil, UnsealRequest{Share: share}, &st)
	return st, err
}

// Seal makes the key service forget its root key (admin); key operations
// are refused until it is unsealed again.
func (c *Client) Seal(ctx context.Context) (KeyServiceStatus, error) {
	var st KeyServiceStatus
	err := c.do(ctx, "POST", "/v1/keys/seal", nil, nil, &st)
	return st, err
}

// RotateKEK creates a new key-encryption key version, rewraps every key
// version under it and destroys the older KEK versions (admin).
func (c *Client) RotateKEK(ctx context.Context) (RotateKEKResponse, error) {
	var resp RotateKEKResponse
	err := c.do(ctx, "POST", "/v1/keys/rotate-kek", nil, nil, &resp)
	return resp, err
}

// RekeyRoot replaces the root key with a new one split into shares of
// which threshold unseal (admin). The answer carries the new shares, once:
// the previous shares stop working at once, so keep the answer. If it is
// lost, call RekeyRoot again while the service is still unsealed.
func (c *Client) RekeyRoot(ctx context.Context, shares, threshold int) (RekeyRootResponse, error) {
	var resp RekeyRootResponse
	err := c.do(ctx, "POST", "/v1/keys/rekey-root", nil, RekeyRootRequest{Shares: shares, Threshold: threshold}, &resp)
	return resp, err
}

// ListKeys lists keys with their versions and policies (viewer); it works
// while sealed.
func (c *Client) ListKeys(ctx context.Context) (KeysResponse, error) {
	var resp KeysResponse
	err := c.do(ctx, "GET", "/v1/keys", nil, nil, &resp)
	return resp, err
}

// CreateKey creates a key with version 1 as its primary (operator).
func (c *Client) CreateKey(ctx context.Context, req CreateKeyRequest) (Key, error) {
	var k Key
	if err := checkKeyName(req.Name); err != nil {
		return k, err
	}
	err := c.do(ctx, "POST", "/v1/keys", nil, req, &k)
	return k, err
}

// RotateKey creates a new primary version of a key (operator); the
// previous primary becomes decrypt-only.
func (c *Client) RotateKey(ctx context.Context, name string) (Key, error) {
	var k Key
	if err := checkKeyName(name); err != nil {
		return k, err
	}
	err := c.do(ctx, "POST", "/v1/keys/"+name+"/rotate", nil, nil, &k)
	return k, err
}

// Rewrap re-encrypts a data-key envelope under the key's primary version
// (operator). aad must be what the envelope was sealed with (nil if none).
func (c *Client) Rewrap(ctx context.Context, name string, envelope, aad []byte) (RewrapResponse, error) {
	var resp RewrapResponse
	if err := checkKeyName(name); err != nil {
		return resp, err
	}
	err := c.do(ctx, "POST", "/v1/keys/"+name+"/rewrap", nil, RewrapRequest{Envelope: envelope, AAD: aad}, &resp)
	return resp, err
}

// SetKeyPolicy replaces a key's policy (operator). An empty
// RotationPeriod takes the server's default.
func (c *Client) SetKeyPolicy(ctx context.Context, name string, p KeyPolicy) (Key, error) {
	var k Key
	if err := checkKeyName(name); err != nil {
		return k, err
	}
	err := c.do(ctx, "PUT", "/v1/keys/"+name+"/policy", nil, p, &k)
	return k, err
}

// RetireKeyVersion disables a decrypt-only version (operator): it keeps
// its material but opens nothing.
func (c *Client) RetireKeyVersion(ctx context.Context, name string, version uint32) (Key, error) {
	return c.changeKeyVersion(ctx, name, version, "retire")
}

// DestroyKeyVersion erases a non-primary version's material for good
// (admin).
func (c *Client) DestroyKeyVersion(ctx context.Context, name string, version uint32) (Key, error) {
	return c.changeKeyVersion(ctx, name, version, "destroy")
}

func (c *Client) changeKeyVersion(ctx context.Context, name string, version uint32, op string) (Key, error) {
	var k Key
	if err := checkKeyName(name); err != nil {
		return k, err
	}
	if version == 0 {
		return k, fmt.Errorf("controlplane: client: %w: key version 0 does not exist", ErrBadRequest)
	}
	err := c.do(ctx, "POST", fmt.Sprintf("/v1/keys/%s/versions/%d/%s", name, version, op), nil, nil, &k)
	return k, err
}

// KeyMessages fetches the key messages for the calling agent (mutual TLS):
// GET /v1/agent/keys?after=cursor. Pass the Cursor of the previous answer
// as after to receive only what changed since, or "" for everything the
// agent should hold. Hand every message to dkms.AgentKeys.Accept, then keep
// the answer's Cursor for the next call.
func (c *Client) KeyMessages(ctx context.Context, after string) (AgentKeysResponse, error) {
	var q url.Values
	if after != "" {
		q = url.Values{"after": {after}}
	}
	var resp AgentKeysResponse
	err := c.do(ctx, "GET", "/v1/agent/keys", q, nil, &resp)
	return resp, err
}

// WatchKeyMessages is KeyMessages as a long poll (mutual TLS): GET
// /v1/agent/keys?after=cursor&wait=wait. When nothing is new at after, the
// server holds the request until the agent's key state changes, then
// answers what changed; when wait (at most MaxKeyWatchWait) ends first, it
// answers no messages and the same cursor. The call is bounded by wait
// plus the client's Timeout (and by ctx); wait 0 is KeyMessages.
func (c *Client) WatchKeyMessages(ctx context.Context, after string, wait time.Duration) (AgentKeysResponse, error) {
	var resp AgentKeysResponse
	if wait < 0 || wait > MaxKeyWatchWait {
		return resp, fmt.Errorf("controlplane: client: %w: wait %s outside 0..%s", ErrBadRequest, wait, MaxKeyWatchWait)
	}
	if wait == 0 {
		return c.KeyMessages(ctx, after)
	}
	q := url.Values{"wait": {wait.String()}}
	if after != "" {
		q.Set("after", after)
	}
	ctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
	defer cancel()
	err := c.doWith(c.watch, ctx, "GET", "/v1/agent/keys", q, nil, &resp)
	return resp, err
}

// KeysVerifyingKey fetches the ML-DSA-65 key that signs key messages
// (mutual TLS); the agent pins it (also sent in EnrollResponse).
func (c *Client) KeysVerifyingKey(ctx context.Context) (VerifyingKeyResponse, error) {
	var resp VerifyingKeyResponse
	err := c.do(ctx, "GET", "/v1/keys/verifying-key", nil, nil, &resp)
	return resp, err
}

// KeyRelay fetches a page of key messages addressed to OTHER agents that
// are behind (mutual TLS): GET /v1/agent/keys/relay?after=cursor. Pass ""
// for the first page and the answer's Cursor for the next; an empty Cursor
// means the last page was reached. The messages are sealed to their
// recipients and signed: the caller cannot open them, only pass them on
// (package agent writes them into the replicated collection "keys.relay").
func (c *Client) KeyRelay(ctx context.Context, after string) (AgentKeysRelayResponse, error) {
	var q url.Values
	if after != "" {
		q = url.Values{"after": {after}}
	}
	var resp AgentKeysRelayResponse
	err := c.do(ctx, "GET", "/v1/agent/keys/relay", q, nil, &resp)
	return resp, err
}
