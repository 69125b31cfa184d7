package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// ErrIngestDisabled: ingestion is off (ingest.enabled false), so there is
// no broker, no dead letters and no device commands.
var ErrIngestDisabled = errors.New("agent: ingestion is disabled (ingest.enabled: false)")

// embeddedSubscribeWait bounds how long Start waits for the subscription
// to the embedded broker (local, normally a few milliseconds).
const embeddedSubscribeWait = 5 * time.Second

// Ingest is the agent's ingestor; nil when ingestion is disabled or the
// agent has not started.
func (a *Agent) Ingest() *ingest.Ingestor {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ingestor
}

// FlushDevices writes every device record with unwritten changes now
// instead of when ingest.device_registry_interval is due (the simulator
// does, so that no registry write falls into its idle window); nothing
// without ingestion.
func (a *Agent) FlushDevices(ctx context.Context) error {
	a.mu.Lock()
	reg := a.registry
	a.mu.Unlock()
	if reg == nil {
		return nil
	}
	if err := reg.Flush(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// Uplink is the agent's uplink to the control plane; nil without a
// control plane (control_plane.url empty) or before Start.
func (a *Agent) Uplink() *uplink.Uplink {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.up
}

// MQTTURL is the broker the agent subscribes to (the embedded broker's
// tcp://host:port when it runs one); "" when ingestion is disabled or
// the agent has not started.
func (a *Agent) MQTTURL() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mqttURL
}

// DeviceRecord is a device's entry in the replicated device registry
// (package agent/devices).
type DeviceRecord = devices.Record

// Devices lists the device registry (the replicated "devices" collection,
// so every agent's devices), sorted by id. Values that are not device
// records are skipped.
func (a *Agent) Devices(ctx context.Context) ([]DeviceRecord, error) {
	s, err := a.liveStore()
	if err != nil {
		return nil, err
	}
	entries, err := s.List(ctx, DevicesCollection)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceRecord, 0, len(entries))
	for _, e := range entries {
		rec, err := devices.Decode(e.Key, e.Value)
		if err != nil {
			a.log.Debug("skipping a value of the devices collection that is not a device record", "key", e.Key, "err", err)
			continue
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(x, y DeviceRecord) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
}

// Device returns one device's record; found is false when the registry
// has none.
func (a *Agent) Device(ctx context.Context, id string) (rec DeviceRecord, found bool, err error) {
	s, err := a.liveStore()
	if err != nil {
		return DeviceRecord{}, false, err
	}
	e, found, err := s.Get(ctx, DevicesCollection, id)
	if err != nil || !found {
		return DeviceRecord{}, false, err
	}
	rec, err = devices.Decode(id, e.Value)
	return rec, err == nil, err
}

// SendCommand publishes payload at QoS 1 to devices/{id}/commands on the
// agent's broker and returns the topic once the broker acknowledged it.
func (a *Agent) SendCommand(ctx context.Context, id string, payload []byte) (string, error) {
	if err := ingest.CheckDeviceID(id); err != nil {
		return "", fmt.Errorf("agent: device id: %w", err)
	}
	if len(payload) == 0 {
		return "", errors.New("agent: command payload is empty")
	}
	if len(payload) > maxCommandBytes {
		return "", fmt.Errorf("agent: command payload of %d bytes exceeds %d", len(payload), maxCommandBytes)
	}
	if !a.running.Load() {
		return "", ErrNotRunning
	}
	in := a.Ingest()
	if in == nil {
		return "", ErrIngestDisabled
	}
	topic := CommandTopic(id)
	if err := in.Publish(ctx, topic, payload); err != nil {
		return "", fmt.Errorf("agent: command to %s: %w", id, err)
	}
	return topic, nil
}

// sinkFanout tells every sink about each commit, in order.
type sinkFanout []ingest.Sink

func (s sinkFanout) Committed(c ingest.Commit) {
	for _, k := range s {
		k.Committed(c)
	}
}

// startEdge starts the parts facing devices and the control plane:
// the ingestion database, the embedded broker (when no broker is
// configured), the device registry, the uplink and the ingestor. On
// failure it has undone what it started.
func (a *Agent) startEdge(ctx context.Context, name string) (err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	ic := &a.cfg.Ingest
	var store *ingest.Store
	var reg *devices.Registry
	if ic.Enabled {
		ilog := a.log.With("component", "ingest")
		sc := ic.storeConfig(filepath.Join(a.cfg.DataDir, ingest.StoreFile), a.cfg.ControlPlane.URL != "")
		sc.Clock, sc.Logger, sc.Registry = a.clk, ilog, a.reg
		if store, err = a.openIngest(ctx, sc); err != nil {
			return fmt.Errorf("agent: opening the ingestion database: %w", err)
		}
		undo = append(undo, func() { store.Close() })
		reg, err = devices.New(devices.Config{
			Agent: name, Interval: ic.DeviceRegistryInterval, Clock: a.clk, Logger: a.log.With("component", "devices"),
			Put: func(ctx context.Context, id string, value []byte) error {
				s := a.Store()
				d, err := s.Put(ctx, DevicesCollection, id, value)
				if err != nil {
					return err
				}
				a.broadcast(d)
				return nil
			},
			Reload: store.Devices,
		})
		if err != nil {
			return fmt.Errorf("agent: device registry: %w", err)
		}
		if err := reg.Register(a.reg); err != nil {
			return fmt.Errorf("agent: registering device registry metrics: %w", err)
		}
		devs, err := store.Devices(ctx)
		if err != nil {
			return fmt.Errorf("agent: reading the ingestion database's devices: %w", err)
		}
		reg.Seed(devs)
	}

	var up *uplink.Uplink
	// The model runtime checks model files with the control plane's key,
	// which the uplink pins; the uplink installs the models deployed to
	// the agent into it.
	mp, err := a.startModels(ctx, store, func() *pqcrypto.VerifyingKey {
		if up == nil {
			return nil
		}
		return up.VerifyingKey()
	})
	if err != nil {
		return fmt.Errorf("agent: models: %w", err)
	}
	undo = append(undo, func() { mp.stop() })
	installer := a.deps.Models
	if installer == nil && mp != nil {
		installer = mp.mgr
	}

	if a.cfg.ControlPlane.URL != "" {
		var seed [32]byte
		if _, err := io.ReadFull(a.rnd, seed[:]); err != nil {
			return fmt.Errorf("agent: seeding the uplink's random source: %w", err)
		}
		deps := uplink.Deps{
			Logger:        a.log.With("component", "uplink"),
			Registry:      a.reg,
			Clock:         a.deps.UplinkClock,
			Rand:          mrand.New(mrand.NewChaCha8(seed)),
			Transport:     a.deps.UplinkTransport,
			WrapTransport: a.deps.UplinkWrapTransport,
			Status:        a.heartbeat,
			KeysChanged:   a.keysChanged.Fire,
			KeyRelay:      a.relayKeys,
			Revocations:   a.offerRevocations,
			Models:        installer,
			Devices:       cpDevices{a},
		}
		if a.cfg.Training.Enabled && store != nil {
			deps.FL = flTrainer{a}
		}
		if deps.Keyring, err = a.uplinkKeyring(); err != nil {
			return err
		}
		if store != nil {
			deps.Outbox = store
		}
		if a.cfg.Green.UploadWindow > 0 {
			deps.DeferUpload = a.deferUpload
		}
		if a.cfg.Green.UpdateWindow > 0 {
			deps.DeferModelUpdate = a.deferModelUpdate
		}
		if up, err = uplink.New(a.cfg.ControlPlane, a.cfg.DataDir, name, deps); err != nil {
			return fmt.Errorf("agent: control_plane: %w", err)
		}
		if err := up.Start(ctx); err != nil {
			return fmt.Errorf("agent: starting the uplink: %w", err)
		}
		undo = append(undo, up.Stop)
	}

	var broker *ingest.Broker
	var in *ingest.Ingestor
	mqttURL := ""
	if ic.Enabled {
		mc, err := a.mqttClientConfig(name)
		if err != nil {
			return err
		}
		if ic.MQTT.Broker == "" {
			bc := ingest.BrokerConfig{Addr: ic.MQTT.EmbeddedListen, Logger: a.log.With("component", "mqtt-broker"), Ingest: true,
				ClientQueue: max(2048, 2*ic.BatchMessages)}
			var w *identityWatch
			if bc.Auth, w, err = a.brokerAuth(ctx, mc.Password); err != nil {
				return err
			}
			if err := a.embeddedBroker(&bc); err != nil {
				return err
			}
			if broker, err = ingest.StartBroker(bc); err != nil {
				hint := ""
				if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
					hint = " (another MQTT broker, e.g. a system mosquitto, may hold it: set ingest.mqtt.broker to use that broker, or ingest.mqtt.embedded_listen to a free address)"
				}
				return fmt.Errorf("agent: ingest.mqtt.embedded_listen %s: starting the embedded broker: %w%s", ic.MQTT.EmbeddedListen, err, hint)
			}
			undo = append(undo, func() { broker.Stop() })
			w.broker = broker
			a.mu.Lock()
			a.idWatch = w
			a.mu.Unlock()
			mc.Broker = broker.URL()
		}
		mqttURL = mc.Broker
		sinks := sinkFanout{reg}
		if up != nil {
			sinks = append(sinks, up)
		}
		if mp != nil && mp.tap != nil {
			sinks = append(sinks, mp.tap)
		}
		in, err = ingest.New(ingest.Config{
			Store:             store,
			MQTT:              mc,
			Embedded:          broker, // nil with an external broker
			TopicPattern:      ic.Topic,
			Limits:            ic.Limits.limits(),
			BatchMessages:     ic.BatchMessages,
			BatchDelay:        ic.BatchDelay,
			QueueMessages:     ic.QueueMessages,
			RetentionInterval: ic.Retention.Interval,
			MinFreeBytes:      ic.minFreeBytes(),
			Clock:             a.clk,
			Logger:            a.log.With("component", "ingest"),
			Registry:          a.reg,
			Sink:              sinks,
			Devices:           reg,
		})
		if err != nil {
			return fmt.Errorf("agent: ingest: %w", err)
		}
		reg.Start()
		undo = append(undo, func() { reg.Stop(context.Background(), false) })
		if err := in.Start(ctx); err != nil {
			return fmt.Errorf("agent: starting ingestion: %w", err)
		}
		undo = append(undo, func() { in.Stop() })
	}

	a.runModels(ctx, mp, in)
	a.mu.Lock()
	a.ingestStore, a.registry, a.up, a.broker, a.ingestor, a.mqttURL = store, reg, up, broker, in, mqttURL
	a.models = mp
	a.mu.Unlock()

	if broker != nil {
		wctx, cancel := context.WithTimeout(ctx, embeddedSubscribeWait)
		err := in.WaitSubscribed(wctx)
		cancel()
		if err != nil {
			a.log.Warn("not yet subscribed to the embedded broker; continuing in the background", "broker", mqttURL, "err", err)
		}
	}
	return nil
}

// mqttClientConfig builds the subscriber's settings; it reads the
// password file and the CA file.
func (a *Agent) mqttClientConfig(name string) (ingest.MQTTConfig, error) {
	m := a.cfg.Ingest.MQTT
	mc := ingest.MQTTConfig{
		Broker:               m.Broker,
		ClientID:             m.ClientID,
		Username:             m.Username,
		Password:             m.Password,
		KeepAlive:            m.KeepAlive,
		ConnectTimeout:       m.ConnectTimeout,
		MaxReconnectInterval: m.MaxReconnectInterval,
	}
	if mc.ClientID == "" {
		mc.ClientID = "edge-agent-" + name
	}
	if m.PasswordFile != "" {
		b, err := os.ReadFile(m.PasswordFile)
		if err != nil {
			return mc, fmt.Errorf("agent: ingest.mqtt.password_file: %w", err)
		}
		mc.Password = strings.TrimRight(string(b), "\r\n")
		if mc.Password == "" {
			return mc, fmt.Errorf("agent: ingest.mqtt.password_file: %s is empty", m.PasswordFile)
		}
	}
	if m.Broker != "" && brokerTLS(m.Broker) {
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if m.CAFile != "" {
			pem, err := os.ReadFile(m.CAFile)
			if err != nil {
				return mc, fmt.Errorf("agent: ingest.mqtt.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return mc, fmt.Errorf("agent: ingest.mqtt.ca_file: %s holds no PEM certificate", m.CAFile)
			}
			conf.RootCAs = pool
		}
		mc.TLSConfig = conf
	}
	return mc, nil
}

// stopEdge stops ingestion first (its last commits are acknowledged to
// the broker and reported to the sinks), then the uplink (which releases
// its leased outbox batches), the device registry (flushing unwritten
// records when graceful), the embedded broker, and closes the ingestion
// database last.
func (a *Agent) stopEdge(ctx context.Context, graceful bool) []error {
	a.mu.Lock()
	in, up, reg, broker, store, mp := a.ingestor, a.up, a.registry, a.broker, a.ingestStore, a.models
	a.mu.Unlock()
	var errs []error
	if in != nil {
		if err := in.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("agent: stopping ingestion: %w", err))
		}
	}
	if err := mp.stop(); err != nil {
		errs = append(errs, err)
	}
	if up != nil {
		up.Stop()
	}
	if reg != nil {
		reg.Stop(ctx, graceful)
	}
	if broker != nil {
		if err := broker.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("agent: %w", err))
		}
	}
	if store != nil {
		if err := store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("agent: closing the ingestion database: %w", err))
		}
	}
	return errs
}
