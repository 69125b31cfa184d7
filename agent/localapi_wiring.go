package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/localapi"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/models"
	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
)

// Handler is the agent's HTTP API (package agent/localapi documents the
// endpoints).
func (a *Agent) Handler() http.Handler {
	return localapi.New(apiBackend{a}, localapi.Config{
		MaxBodyBytes:    a.cfg.API.MaxBodyBytes,
		MaxCommandBytes: maxCommandBytes,
		IngestTopic:     a.cfg.Ingest.Topic,
		IngestEmbedded:  a.cfg.Ingest.MQTT.Broker == "",
		Version:         Version,
		Unavailable:     []error{ErrNotRunning, ErrIngestDisabled, ErrTrainingDisabled, ErrModelsDisabled},
		Registry:        a.reg,
		Logger:          a.log,
		Clock:           a.clk,
		Guarded: map[string]string{IdentitiesCollection: "agent: " + IdentitiesCollection +
			" holds device credentials: change them through /v1/identities (edgectl devices register, rotate-secret, disable, enable)"},
	})
}

// startAPI listens on api.addr and serves Handler.
func (a *Agent) startAPI() error {
	if a.cfg.API.Addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.API.Addr)
	if err != nil {
		return fmt.Errorf("agent: API listen: %w", err)
	}
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.mu.Lock()
	a.api = srv
	a.apiAddr = ln.Addr().String()
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("API server stopped", "err", err)
		}
	}()
	return nil
}

// apiBackend is the agent as the local API sees it (localapi.Backend).
type apiBackend struct{ a *Agent }

var _ localapi.Backend = apiBackend{}

func (b apiBackend) LiveStore() (*crdt.Store, error) { return b.a.liveStore() }

func (b apiBackend) Commit(op func(s *crdt.Store) (crdt.Delta, error)) (crdt.Delta, error) {
	return b.a.local(op)
}

func (b apiBackend) CollectionType(coll string) crdt.Type {
	if t, ok := b.a.cfg.State.Collections[coll]; ok {
		return t
	}
	return crdt.TypeLWW
}

func (b apiBackend) Name() string                 { return b.a.Name() }
func (b apiBackend) Running() bool                { return b.a.running.Load() }
func (b apiBackend) StartedAt() time.Time         { return b.a.startedAt }
func (b apiBackend) Members() []membership.Member { return b.a.Members() }
func (b apiBackend) Health() *cpapi.Health        { return b.a.health() }

func (b apiBackend) Ready(ctx context.Context) (int, string, error) {
	a := b.a
	if !a.running.Load() || a.repl.Load() == nil {
		return 0, "", errors.New("agent not running")
	}
	if _, err := a.Store().VersionVector(ctx); err != nil {
		return 0, "", fmt.Errorf("store: %w", err)
	}
	r := a.Readiness()
	if r.NotReady != "" {
		return 0, "", errors.New(r.NotReady)
	}
	return a.peers.Load().Count(StateAlive), r.Degraded, nil
}

func (b apiBackend) DeviceIdentities(ctx context.Context) ([]devices.Identity, error) {
	return b.a.DeviceIdentities(ctx)
}

func (b apiBackend) DeviceIdentity(ctx context.Context, id string) (devices.Identity, bool, error) {
	return b.a.DeviceIdentity(ctx, id)
}

func (b apiBackend) RegisterDevice(ctx context.Context, id string, publish, subscribe []string) (devices.Identity, string, error) {
	return b.a.RegisterDevice(ctx, id, publish, subscribe)
}

func (b apiBackend) RotateDeviceSecret(ctx context.Context, id string) (devices.Identity, string, error) {
	return b.a.RotateDeviceSecret(ctx, id)
}

func (b apiBackend) SetDeviceState(ctx context.Context, id, state string) (devices.Identity, error) {
	return b.a.SetDeviceState(ctx, id, state)
}

func (b apiBackend) Devices(ctx context.Context) ([]devices.Record, error) { return b.a.Devices(ctx) }

func (b apiBackend) Device(ctx context.Context, id string) (devices.Record, bool, error) {
	return b.a.Device(ctx, id)
}

func (b apiBackend) SendCommand(ctx context.Context, id string, payload []byte) (string, error) {
	return b.a.SendCommand(ctx, id, payload)
}

func (b apiBackend) Ingestor() (*ingest.Ingestor, error) {
	if !b.a.running.Load() {
		return nil, ErrNotRunning
	}
	in := b.a.Ingest()
	if in == nil {
		return nil, ErrIngestDisabled
	}
	return in, nil
}

func (b apiBackend) Uplink() (uplink.Status, bool) {
	up := b.a.Uplink()
	if up == nil {
		return uplink.Status{}, false
	}
	return up.Status(), true
}

func (b apiBackend) HeldKeys() []dkms.KeyInfo {
	if ks := b.a.Keys(); ks != nil {
		return ks.Keys()
	}
	return nil
}

func (b apiBackend) GossipKeys() (keys.RingState, bool) {
	if !b.a.running.Load() || b.a.gossipKeys == nil {
		return keys.RingState{}, false
	}
	return b.a.gossipKeys.State(), true
}

func (b apiBackend) Training() (*training.Manager, error) {
	if !b.a.running.Load() {
		return nil, ErrNotRunning
	}
	m := b.a.Training()
	if m == nil {
		return nil, ErrTrainingDisabled
	}
	return m, nil
}

func (b apiBackend) Models() (*models.Manager, error) {
	if !b.a.running.Load() {
		return nil, ErrNotRunning
	}
	mg := b.a.Models()
	if mg == nil {
		return nil, ErrModelsDisabled
	}
	return mg, nil
}
