package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/models"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// ErrModelsDisabled: the model runtime is off (models.enabled false).
var ErrModelsDisabled = errors.New("agent: the model runtime is disabled (models.enabled: false)")

// modelParts are the model runtime's parts (package agent/models).
type modelParts struct {
	mgr    *models.Manager
	tap    *ingest.Tap                    // nil without ingestion
	store  *models.Store                  // nil without ingestion
	rt     atomic.Pointer[models.Runtime] // set once the runtime exists
	pub    *ingest.Publisher              // predictions' own connection to an external broker
	outbox *models.Outbox                 // publishes the stored predictions
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Models is the agent's model manager; nil when the model runtime is
// disabled or the agent has not started.
func (a *Agent) Models() *models.Manager {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.models == nil {
		return nil
	}
	return a.models.mgr
}

// startModels builds the model manager, and with ingestion the tap
// ingestion hands committed readings to and the predictions database.
// controlPlaneKey is the key the uplink pinned (nil before enrollment).
// Models are loaded (and verified again) once the uplink has started:
// see runModels.
func (a *Agent) startModels(ctx context.Context, store *ingest.Store, controlPlaneKey func() *pqcrypto.VerifyingKey) (*modelParts, error) {
	mc := a.cfg.Models
	if !mc.Enabled {
		return nil, nil
	}
	p := &modelParts{}
	var fileKey *pqcrypto.VerifyingKey
	if mc.VerifyingKeyFile != "" {
		var err error
		if fileKey, err = readVerifyingKey(mc.VerifyingKeyFile); err != nil {
			return nil, err
		}
	}
	cfg := models.Config{
		Dir:      filepath.Join(a.cfg.DataDir, models.DirName),
		Clock:    a.clk,
		Logger:   a.log.With("component", "models"),
		Registry: a.reg,
		VerifyingKey: func() *pqcrypto.VerifyingKey {
			if fileKey != nil {
				return fileKey
			}
			return controlPlaneKey()
		},
		ControlPlaneKey: controlPlaneKey,
		Changed: func([]*models.Model) {
			if rt := p.rt.Load(); rt != nil {
				rt.Refresh()
			}
		},
	}
	if store != nil {
		cfg.Devices = func(ctx context.Context) ([]models.DeviceMetrics, error) { return deviceMetrics(ctx, store) }
		p.tap = ingest.NewTap(ingest.TapConfig{MaxReadings: mc.QueueReadings, MaxNames: mc.MaxDevices + 256})
		ps, err := models.OpenStore(models.StoreConfig{Path: filepath.Join(a.cfg.DataDir, models.StoreFile),
			MaxRows: mc.PredictionsMaxRows, MaxAge: mc.PredictionsMaxAge, Outbox: mc.Publish, Clock: a.clk})
		if err != nil {
			return nil, err
		}
		p.store = ps
	}
	mgr, err := models.New(cfg)
	if err != nil {
		p.close()
		return nil, err
	}
	p.mgr = mgr
	if p.tap != nil {
		if err := models.RegisterTap(a.reg, p.tap); err != nil {
			p.close()
			return nil, fmt.Errorf("agent: registering model runtime metrics: %w", err)
		}
	}
	return p, nil
}

// deviceMetrics lists the ingestion database's devices and their numeric
// metrics.
func deviceMetrics(ctx context.Context, store *ingest.Store) ([]models.DeviceMetrics, error) {
	devs, err := store.Devices(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]models.DeviceMetrics, 0, len(devs))
	for _, d := range devs {
		dm := models.DeviceMetrics{Device: d.ID}
		for _, m := range d.Metrics {
			if m.Kind == ingest.KindNumber.String() || m.Kind == ingest.KindBool.String() {
				dm.Metrics = append(dm.Metrics, m.Name)
			}
		}
		out = append(out, dm)
	}
	return out, nil
}

// runModels loads the deployed models and, with ingestion, starts the
// runtime that runs them on committed readings, publishing through in.
func (a *Agent) runModels(ctx context.Context, p *modelParts, in *ingest.Ingestor) {
	if p == nil {
		return
	}
	if p.tap != nil {
		rc := models.RuntimeConfig{Manager: p.mgr, Tap: p.tap, Store: p.store, MaxDevices: a.cfg.Models.MaxDevices,
			MaxPoints: a.cfg.Models.MaxPoints, Clock: a.clk, Logger: a.log.With("component", "inference")}
		if a.cfg.Models.Publish && in != nil {
			pub, own, err := a.inferencePublisher(in)
			if err == nil {
				p.pub = own
				p.outbox, err = models.NewOutbox(models.OutboxConfig{Store: p.store, Publisher: pub,
					MaxInFlight: a.cfg.Models.PublishMaxInFlight, Clock: a.clk, Logger: a.log.With("component", "inference"), Registry: a.reg})
			}
			if err != nil {
				a.log.Error("predictions will not be published (they are stored)", "err", err)
			}
		}
		p.rt.Store(models.NewRuntime(rc))
	}
	if n, err := p.mgr.Load(ctx); err != nil {
		a.log.Error("loading the deployed models", "err", err)
	} else if n > 0 {
		a.log.Info("deployed models loaded", "models", n)
	}
	if rt := p.rt.Load(); rt != nil {
		rt.Refresh()
		bg, cancel := context.WithCancel(context.Background())
		p.cancel = cancel
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			rt.Run(bg)
		}()
		if p.outbox != nil {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.outbox.Run(bg)
			}()
		}
	}
}

// inferencePublisher is what publishes predictions: the ingestor, which
// hands them to the embedded broker in process, or, with an external
// broker, a connection of its own (own; see ingest.Publisher for why).
func (a *Agent) inferencePublisher(in *ingest.Ingestor) (pub models.Publisher, own *ingest.Publisher, err error) {
	if a.cfg.Ingest.MQTT.Broker == "" {
		return in, nil, nil
	}
	mc, err := a.mqttClientConfig(a.Name())
	if err != nil {
		return nil, nil, err
	}
	mc.ClientID += "-inference"
	if own, err = ingest.NewPublisher(mc, a.log.With("component", "inference")); err != nil {
		return nil, nil, err
	}
	return own, own, nil
}

// stop stops the runtime and the outbox (after ingestion), which
// records how far the predictions were published, and closes the
// predictions database.
func (p *modelParts) stop() error {
	if p == nil {
		return nil
	}
	if p.cancel != nil {
		p.cancel()
		p.wg.Wait()
	}
	if p.pub != nil {
		p.pub.Close()
	}
	return p.close()
}

func (p *modelParts) close() error {
	if p.store != nil {
		if err := p.store.Close(); err != nil {
			return fmt.Errorf("agent: closing the predictions database: %w", err)
		}
	}
	return nil
}

// readVerifyingKey reads models.verifying_key_file: base64 of an
// ML-DSA-65 public key.
func readVerifyingKey(path string) (*pqcrypto.VerifyingKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent: models.verifying_key_file: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("agent: models.verifying_key_file: %s is not base64: %w", path, err)
	}
	vk, err := pqcrypto.ParseVerifyingKey(raw)
	if err != nil {
		return nil, fmt.Errorf("agent: models.verifying_key_file: %s: %w", path, err)
	}
	return vk, nil
}
