package agentapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// DeviceIdentity is a registered device's credential and access rules
// (replicated collection device_identities): GET /v1/identities.
type DeviceIdentity struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"` // the secret's "$7$" PBKDF2-SHA512 hash (Mosquitto's format)
	Publish   []string  `json:"publish"`
	Subscribe []string  `json:"subscribe"`
	State     string    `json:"state"` // active or disabled
	Created   time.Time `json:"created"`
	Rotated   time.Time `json:"rotated"` // the secret last set
	Updated   time.Time `json:"updated"`
}

// IdentityList is the answer of GET /v1/identities.
type IdentityList struct {
	Identities []DeviceIdentity `json:"identities"`
}

// RegisterRequest is the body of POST /v1/identities; empty topic lists
// mean the defaults.
type RegisterRequest struct {
	ID        string   `json:"id"`
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
}

// IdentitySecret answers a register or rotate: the identity and its new
// secret, which no later answer shows again.
type IdentitySecret struct {
	Identity DeviceIdentity `json:"identity"`
	Secret   string         `json:"secret"`
}

// Identities lists the registered devices.
func (c *Client) Identities(ctx context.Context) ([]DeviceIdentity, error) {
	var l IdentityList
	if err := c.do(ctx, http.MethodGet, "/v1/identities", nil, nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Identities, nil
}

// Identity returns one device's identity.
func (c *Client) Identity(ctx context.Context, id string) (DeviceIdentity, error) {
	var d DeviceIdentity
	return d, c.do(ctx, http.MethodGet, "/v1/identities/"+url.PathEscape(id), nil, nil, http.StatusOK, &d)
}

// Register gives a device an identity and returns its secret.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (IdentitySecret, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return IdentitySecret{}, err
	}
	var r IdentitySecret
	return r, c.do(ctx, http.MethodPost, "/v1/identities", nil, body, http.StatusCreated, &r)
}

// RotateSecret gives a device a new secret.
func (c *Client) RotateSecret(ctx context.Context, id string) (IdentitySecret, error) {
	var r IdentitySecret
	return r, c.do(ctx, http.MethodPost, "/v1/identities/"+url.PathEscape(id)+"/rotate", nil, nil, http.StatusOK, &r)
}

// SetIdentityEnabled enables or disables a device.
func (c *Client) SetIdentityEnabled(ctx context.Context, id string, enabled bool) (DeviceIdentity, error) {
	action := "/disable"
	if enabled {
		action = "/enable"
	}
	var d DeviceIdentity
	return d, c.do(ctx, http.MethodPost, "/v1/identities/"+url.PathEscape(id)+action, nil, nil, http.StatusOK, &d)
}
