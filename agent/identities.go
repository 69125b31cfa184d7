package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/crdt"
)

// Device identities: each device's credential and topics live in the
// replicated LWW collection "device_identities" (package agent/devices,
// Identity), so every agent of a site admits it and it can move between
// gateways. The embedded broker authenticates against them (package
// agent/ingest, auth.go); each agent polls the collection for changes
// (ingest.broker.identity_poll) and closes the connections of devices
// disabled, removed or given a new secret. Changes are logged as audit
// records ("audit" message, component "devices").

// IdentitiesCollection is the replicated LWW collection of device
// identities: key device id, value a JSON DeviceIdentity.
const IdentitiesCollection = "device_identities"

// DeviceIdentity is a device's credential and access rules.
type DeviceIdentity = devices.Identity

// Errors of the identity operations (package agent/devices).
var (
	ErrDeviceRegistered    = devices.ErrRegistered
	ErrDeviceNotRegistered = devices.ErrNotRegistered
	ErrBadIdentity         = devices.ErrInvalidIdentity
)

// DeviceIdentities lists the registered devices, sorted by id; values
// that are not valid identities are skipped (and logged).
func (a *Agent) DeviceIdentities(ctx context.Context) ([]DeviceIdentity, error) {
	s, err := a.liveStore()
	if err != nil {
		return nil, err
	}
	return a.readIdentities(ctx, s)
}

func (a *Agent) readIdentities(ctx context.Context, s *crdt.Store) ([]DeviceIdentity, error) {
	entries, err := s.List(ctx, IdentitiesCollection)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceIdentity, 0, len(entries))
	for _, e := range entries {
		d, err := devices.DecodeIdentity(e.Key, e.Value)
		if err != nil {
			a.log.Warn("skipping an invalid device identity in replicated state", "key", e.Key, "origin", e.Origin, "err", err)
			continue
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(x, y DeviceIdentity) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
}

// DeviceIdentity returns one device's identity; found is false when it
// has none.
func (a *Agent) DeviceIdentity(ctx context.Context, id string) (DeviceIdentity, bool, error) {
	s, err := a.liveStore()
	if err != nil {
		return DeviceIdentity{}, false, err
	}
	e, found, err := s.Get(ctx, IdentitiesCollection, id)
	if err != nil || !found {
		return DeviceIdentity{}, false, err
	}
	d, err := devices.DecodeIdentity(id, e.Value)
	return d, err == nil, err
}

// RegisterDevice gives a device an identity with a new random secret,
// returned once (only its hash is stored). Empty publish and subscribe
// mean the defaults (devices.DefaultTopics).
func (a *Agent) RegisterDevice(ctx context.Context, id string, publish, subscribe []string) (DeviceIdentity, string, error) {
	if err := ingest.CheckDeviceID(id); err != nil {
		return DeviceIdentity{}, "", fmt.Errorf("%w: id: %v", ErrBadIdentity, err)
	}
	if _, found, err := a.DeviceIdentity(ctx, id); err != nil {
		return DeviceIdentity{}, "", err
	} else if found {
		return DeviceIdentity{}, "", fmt.Errorf("%w: %s", ErrDeviceRegistered, id)
	}
	dp, ds := devices.DefaultTopics(id, a.cfg.Ingest.Topic)
	if len(publish) == 0 {
		publish = dp
	}
	if len(subscribe) == 0 {
		subscribe = ds
	}
	secret, hash, err := a.newSecret()
	if err != nil {
		return DeviceIdentity{}, "", err
	}
	now := a.clk.Now().UTC()
	d := DeviceIdentity{ID: id, Hash: hash, Publish: publish, Subscribe: subscribe, State: devices.StateActive,
		Created: now, Rotated: now, Updated: now}
	if err := d.Check(); err != nil {
		return DeviceIdentity{}, "", fmt.Errorf("%w: %v", ErrBadIdentity, err)
	}
	if err := a.putIdentity(ctx, d, "register"); err != nil {
		return DeviceIdentity{}, "", err
	}
	return d, secret, nil
}

// RotateDeviceSecret gives a registered device a new secret, returned
// once; connections made with the old one are closed.
func (a *Agent) RotateDeviceSecret(ctx context.Context, id string) (DeviceIdentity, string, error) {
	d, err := a.mustIdentity(ctx, id)
	if err != nil {
		return DeviceIdentity{}, "", err
	}
	secret, hash, err := a.newSecret()
	if err != nil {
		return DeviceIdentity{}, "", err
	}
	now := a.clk.Now().UTC()
	d.Hash, d.Rotated, d.Updated = hash, now, now
	if err := a.putIdentity(ctx, d, "rotate-secret"); err != nil {
		return DeviceIdentity{}, "", err
	}
	return d, secret, nil
}

// SetDeviceState enables (devices.StateActive) or disables a registered
// device; disabling closes its connections on every agent of the site.
func (a *Agent) SetDeviceState(ctx context.Context, id, state string) (DeviceIdentity, error) {
	if state != devices.StateActive && state != devices.StateDisabled {
		return DeviceIdentity{}, fmt.Errorf("%w: state %q (want active or disabled)", ErrBadIdentity, state)
	}
	d, err := a.mustIdentity(ctx, id)
	if err != nil {
		return DeviceIdentity{}, err
	}
	if d.State == state {
		return d, nil
	}
	d.State, d.Updated = state, a.clk.Now().UTC()
	action := "enable"
	if state == devices.StateDisabled {
		action = "disable"
	}
	if err := a.putIdentity(ctx, d, action); err != nil {
		return DeviceIdentity{}, err
	}
	return d, nil
}

func (a *Agent) mustIdentity(ctx context.Context, id string) (DeviceIdentity, error) {
	if err := ingest.CheckDeviceID(id); err != nil {
		return DeviceIdentity{}, fmt.Errorf("%w: id: %v", ErrBadIdentity, err)
	}
	d, found, err := a.DeviceIdentity(ctx, id)
	if err != nil {
		return DeviceIdentity{}, err
	}
	if !found {
		return DeviceIdentity{}, fmt.Errorf("%w: %s", ErrDeviceNotRegistered, id)
	}
	return d, nil
}

// newSecret draws a secret and its hash from the agent's random source.
func (a *Agent) newSecret() (secret, hash string, err error) {
	if secret, err = devcred.NewSecret(a.rnd); err != nil {
		return "", "", fmt.Errorf("agent: %w", err)
	}
	if hash, err = devcred.HashSecret(a.rnd, secret); err != nil {
		return "", "", fmt.Errorf("agent: %w", err)
	}
	return secret, hash, nil
}

// putIdentity writes an identity, gossips it, applies it to this agent's
// broker at once and logs the audit record.
func (a *Agent) putIdentity(ctx context.Context, d DeviceIdentity, action string) error {
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("agent: encoding identity %s: %w", d.ID, err)
	}
	_, err = a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.Put(ctx, IdentitiesCollection, d.ID, b) })
	log := a.log.With("component", "devices")
	if err != nil {
		log.Warn("audit", "action", "device."+action, "device", d.ID, "result", "failed", "err", err)
		return err
	}
	log.Info("audit", "action", "device."+action, "device", d.ID, "state", d.State,
		"publish", d.Publish, "subscribe", d.Subscribe, "result", "ok")
	a.mu.Lock()
	w := a.idWatch
	a.mu.Unlock()
	if w != nil {
		w.refresh(ctx) // this agent enforces the change before answering
	}
	return nil
}

// identityWatch keeps the embedded broker's identities in step with the
// replicated collection.
type identityWatch struct {
	a      *Agent
	broker *ingest.Broker
	own    []ingest.Identity // the agent's own user, if configured
	every  time.Duration

	mu   sync.Mutex // serializes refresh (watcher and local writes)
	last crdt.VersionVector
	seen map[string]decodedIdentity // by key, as of last
}

// brokerAuth prepares the embedded broker's auth: the agent's own
// user (ingest.mqtt.username, when set) and the identities stored now,
// so devices are admitted from the broker's first connection.
func (a *Agent) brokerAuth(ctx context.Context, password string) (*ingest.AuthConfig, *identityWatch, error) {
	ic := &a.cfg.Ingest
	w := &identityWatch{a: a, every: ic.Broker.IdentityPoll}
	if ic.MQTT.Username != "" {
		hash, err := devcred.HashSecret(a.rnd, password)
		if err != nil {
			return nil, nil, fmt.Errorf("agent: hashing ingest.mqtt.password: %w", err)
		}
		telemetry := strings.ReplaceAll(ic.Topic, "{device_id}", "+")
		w.own = []ingest.Identity{{Name: ic.MQTT.Username, Hash: hash, AnyClientID: true,
			Publish: []string{"devices/+/commands", "devices/+/inference"}, Subscribe: []string{telemetry}}}
	}
	ids, err := w.read(ctx)
	if err != nil {
		return nil, nil, err
	}
	// A configured user turns anonymous access off, as it did before
	// device identities.
	anon := ic.Broker.AllowAnonymous && ic.MQTT.Username == ""
	if anon {
		a.log.Warn("the embedded broker admits anonymous MQTT clients with access to every topic (ingest.broker.allow_anonymous: true); register devices (edgectl devices register) and set it false",
			"listen", ic.MQTT.EmbeddedListen, "registered_devices", len(ids)-len(w.own))
	}
	return &ingest.AuthConfig{AllowAnonymous: anon, CacheEntries: ic.Broker.AuthCacheEntries,
		Registry: a.reg, Identities: ids}, w, nil
}

// read returns the broker identities: the agent's own and every
// registered device's; it records the store's version vector. Only the
// entries written since the last read are decoded (and an invalid one
// is logged once per write).
func (w *identityWatch) read(ctx context.Context) ([]ingest.Identity, error) {
	s := w.a.Store()
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: reading device identities: %w", err)
	}
	entries, err := s.List(ctx, IdentitiesCollection)
	if err != nil {
		return nil, fmt.Errorf("agent: reading device identities: %w", err)
	}
	seen := make(map[string]decodedIdentity, len(entries))
	out := append(make([]ingest.Identity, 0, len(entries)+len(w.own)), w.own...)
	for _, e := range entries {
		d, ok := w.seen[e.Key]
		if !ok || d.hlc != e.HLC || d.origin != e.Origin {
			d = decodedIdentity{hlc: e.HLC, origin: e.Origin}
			id, err := devices.DecodeIdentity(e.Key, e.Value)
			switch {
			case err != nil:
				w.a.log.Warn("skipping an invalid device identity in replicated state", "key", e.Key, "origin", e.Origin, "err", err)
			case len(w.own) > 0 && id.ID == w.own[0].Name:
				w.a.log.Warn("a device identity has the agent's own MQTT user name; the agent's user wins", "device", id.ID)
			default:
				d.id, d.ok = id.Broker(), true
			}
		}
		seen[e.Key] = d
		if d.ok {
			out = append(out, d.id)
		}
	}
	w.seen, w.last = seen, vv
	return out, nil
}

// decodedIdentity is an entry of the collection as last decoded.
type decodedIdentity struct {
	hlc    crdt.Timestamp
	origin string
	id     ingest.Identity
	ok     bool // decoded and valid
}

// refresh applies the identities when replicated state changed.
func (w *identityWatch) refresh(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	vv, err := w.a.Store().VersionVector(ctx)
	if err != nil || maps.Equal(vv, w.last) {
		return
	}
	ids, err := w.read(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.a.log.Warn("device identities", "err", err)
		}
		return
	}
	if n := w.broker.SetIdentities(ids); n > 0 {
		w.a.log.Info("closed the MQTT connections of changed device identities", "connections", n)
	}
}

// startIdentityWatch polls replicated state for identity changes until
// ctx ends (with the embedded broker only).
func (a *Agent) startIdentityWatch(ctx context.Context) {
	a.mu.Lock()
	w := a.idWatch
	a.mu.Unlock()
	if w == nil {
		return
	}
	a.goLoop(func() {
		t := a.clk.NewTicker(w.every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
			}
			w.refresh(ctx)
		}
	})
}
