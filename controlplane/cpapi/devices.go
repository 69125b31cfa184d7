package cpapi

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Wire types and client calls of the fleet's device identities
// (/v1/devices) and of their feed to the agents (/v1/agent/devices).
//
// Device identities live in the agents' replicated state (collection
// device_identities), so every agent of a site admits a device. An
// operator manages them through the control plane (this API, fleet-wide,
// recorded in the audit chain) or through one agent's local API (while
// the control plane is unreachable). Each agent follows the control
// plane's changes (GET /v1/agent/devices, a long poll) and writes each
// into replicated state; gossip carries it to the rest of the site.

// MaxDeviceWatchWait bounds the "wait" parameter of GET /v1/agent/devices.
const MaxDeviceWatchWait = MaxKeyWatchWait

// Device identity states.
const (
	DeviceActive   = "active"
	DeviceDisabled = "disabled"
)

// DeviceIdentity is a device's credential and access rules as the
// control plane keeps them. Hash (the secret's "$7$" PBKDF2-SHA512 hash)
// is given to agents only; operators never see it, and nobody sees the
// secret after the answer that created it.
type DeviceIdentity struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash,omitempty"`
	Publish   []string  `json:"publish"`
	Subscribe []string  `json:"subscribe"`
	State     string    `json:"state"`
	Created   time.Time `json:"created"`
	Rotated   time.Time `json:"rotated"`
	Updated   time.Time `json:"updated"`
	// Seq orders the control plane's changes: each change of any
	// identity takes the next number.
	Seq int64 `json:"seq"`
}

// RegisterDeviceRequest is the body of POST /v1/devices. Empty topic
// lists mean the defaults: publish devices/{id}/telemetry, subscribe
// devices/{id}/commands and devices/{id}/inference.
type RegisterDeviceRequest struct {
	ID        string   `json:"id"`
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
}

// DeviceSecretResponse answers a registration or a secret rotation: the
// identity and its new secret, shown this once.
type DeviceSecretResponse struct {
	Device DeviceIdentity `json:"device"`
	Secret string         `json:"secret"`
}

// DevicesResponse answers GET /v1/devices.
type DevicesResponse struct {
	Devices []DeviceIdentity `json:"devices"`
}

// AgentDevicesResponse answers GET /v1/agent/devices: the identities
// changed after the "after" sequence number, in sequence order, and the
// sequence number to ask after next.
type AgentDevicesResponse struct {
	Changes []DeviceIdentity `json:"changes"`
	Seq     int64            `json:"seq"`
}

func devicePath(id string, rest ...string) string {
	p := "/v1/devices/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// ListDevices lists the identities the control plane manages (viewer).
func (c *Client) ListDevices(ctx context.Context) ([]DeviceIdentity, error) {
	var resp DevicesResponse
	err := c.do(ctx, "GET", "/v1/devices", nil, nil, &resp)
	return resp.Devices, err
}

// GetDevice describes one identity (viewer).
func (c *Client) GetDevice(ctx context.Context, id string) (DeviceIdentity, error) {
	var d DeviceIdentity
	err := c.do(ctx, "GET", devicePath(id), nil, nil, &d)
	return d, err
}

// RegisterDevice creates an identity and returns its secret (operator).
func (c *Client) RegisterDevice(ctx context.Context, req RegisterDeviceRequest) (DeviceSecretResponse, error) {
	var resp DeviceSecretResponse
	err := c.do(ctx, "POST", "/v1/devices", nil, req, &resp)
	return resp, err
}

// RotateDeviceSecret gives a device a new secret (operator); the old one
// stops working once the change reached the agents.
func (c *Client) RotateDeviceSecret(ctx context.Context, id string) (DeviceSecretResponse, error) {
	var resp DeviceSecretResponse
	err := c.do(ctx, "POST", devicePath(id, "rotate-secret"), nil, nil, &resp)
	return resp, err
}

// SetDeviceState disables (enabled false) or enables a device
// (operator): the agents close a disabled device's connections.
func (c *Client) SetDeviceState(ctx context.Context, id string, enabled bool) (DeviceIdentity, error) {
	action := "disable"
	if enabled {
		action = "enable"
	}
	var d DeviceIdentity
	err := c.do(ctx, "POST", devicePath(id, action), nil, nil, &d)
	return d, err
}

// WatchDevices asks for the identities changed after sequence number
// after (mutual TLS). With wait > 0 (at most MaxDeviceWatchWait) the
// server holds the request until there is a change or the wait ends.
func (c *Client) WatchDevices(ctx context.Context, after int64, wait time.Duration) (AgentDevicesResponse, error) {
	var resp AgentDevicesResponse
	if wait < 0 || wait > MaxDeviceWatchWait {
		return resp, fmt.Errorf("controlplane: client: %w: wait %s outside 0..%s", ErrBadRequest, wait, MaxDeviceWatchWait)
	}
	q := url.Values{"after": {strconv.FormatInt(after, 10)}}
	if wait == 0 {
		err := c.do(ctx, "GET", "/v1/agent/devices", q, nil, &resp)
		return resp, err
	}
	q.Set("wait", wait.String())
	ctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
	defer cancel()
	err := c.doWith(c.watch, ctx, "GET", "/v1/agent/devices", q, nil, &resp)
	return resp, err
}
