package devices

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/agent/ingest"
)

// Identity states.
const (
	StateActive   = "active"
	StateDisabled = "disabled"
)

var (
	// ErrRegistered: register of a device that has an identity.
	ErrRegistered = errors.New("devices: device is already registered (rotate-secret gives it a new secret)")
	// ErrNotRegistered: the device has no identity.
	ErrNotRegistered = errors.New("devices: device is not registered")
	// ErrInvalidIdentity: an identity's id, state or topics are invalid.
	ErrInvalidIdentity = errors.New("devices: invalid device identity")
)

// maxTopics bounds the filters of one direction of an identity.
const maxTopics = 32

// Identity is a device's credential and access rules in the replicated
// LWW collection "device_identities" (key = device id), so every agent
// of a site admits the device. It is kept apart from the activity Record
// ("devices"), which each ingesting agent rewrites: the two must not
// overwrite each other. Concurrent changes of one identity on two agents
// resolve last-writer-wins (the later HLC stamp).
type Identity struct {
	// ID is the device id, its MQTT user name and client id.
	ID string `json:"id"`
	// Hash is the secret's salted PBKDF2-SHA512 hash in Mosquitto's
	// "$7$" format (the secret itself is never stored).
	Hash string `json:"hash"`
	// Publish and Subscribe are the topic filters it may publish to, and
	// subscribe to and receive from.
	Publish   []string `json:"publish"`
	Subscribe []string `json:"subscribe"`
	// State is "active" or "disabled".
	State string `json:"state"`
	// Created, Rotated (the secret last set) and Updated (any change).
	Created time.Time `json:"created"`
	Rotated time.Time `json:"rotated"`
	Updated time.Time `json:"updated"`
}

// DefaultTopics are a device's default rules: publish its telemetry
// topic (pattern: ingest.topic, {device_id} replaced), subscribe to its
// commands and inference results.
func DefaultTopics(id, telemetryPattern string) (publish, subscribe []string) {
	if telemetryPattern == "" {
		telemetryPattern = ingest.DefaultTopicPattern
	}
	return []string{strings.ReplaceAll(telemetryPattern, "{device_id}", id)},
		[]string{"devices/" + id + "/commands", "devices/" + id + "/inference"}
}

// Check validates an identity: id, hash, state and topic filters.
func (d Identity) Check() error {
	if err := ingest.CheckDeviceID(d.ID); err != nil {
		return fmt.Errorf("devices: identity id: %w", err)
	}
	if _, err := devcred.ParseHash(d.Hash); err != nil {
		return fmt.Errorf("devices: identity %s: %w", d.ID, err)
	}
	if d.State != StateActive && d.State != StateDisabled {
		return fmt.Errorf("devices: identity %s: state %q (want active or disabled)", d.ID, d.State)
	}
	for dir, fs := range map[string][]string{"publish": d.Publish, "subscribe": d.Subscribe} {
		if len(fs) > maxTopics {
			return fmt.Errorf("devices: identity %s: %d %s topics, at most %d", d.ID, len(fs), dir, maxTopics)
		}
		for _, f := range fs {
			if err := devcred.CheckFilter(f); err != nil {
				return fmt.Errorf("devices: identity %s: %s topic: %w", d.ID, dir, err)
			}
		}
	}
	return nil
}

// DecodeIdentity decodes and checks an identity read from replicated
// state (key: the device id).
func DecodeIdentity(key string, value []byte) (Identity, error) {
	var d Identity
	if err := json.Unmarshal(value, &d); err != nil {
		return Identity{}, fmt.Errorf("devices: identity %.64q: %w", key, err)
	}
	if d.ID != key {
		return Identity{}, fmt.Errorf("devices: identity %.64q holds id %.64q", key, d.ID)
	}
	if err := d.Check(); err != nil {
		return Identity{}, err
	}
	return d, nil
}

// Broker is the identity as the embedded broker admits it.
func (d Identity) Broker() ingest.Identity {
	return ingest.Identity{Name: d.ID, Hash: d.Hash, Publish: d.Publish, Subscribe: d.Subscribe, Disabled: d.State != StateActive}
}

// User is the identity as a broker user for export (package devcred).
func (d Identity) User() devcred.User {
	return devcred.User{Name: d.ID, Hash: d.Hash, Publish: d.Publish, Subscribe: d.Subscribe}
}
