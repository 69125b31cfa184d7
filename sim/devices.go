package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// devices replays the occupancy data set as simulated devices of one
// agent, over real MQTT to the agent's broker. A replay stops with the
// agent (stop) and starts anew when it restarts.
type devices struct {
	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	stats   ingest.ReplayStats // of finished replays
	lastErr error
}

// start begins replaying to broker as the node's devices.
func (d *devices) start(f *Fleet, n *node, broker string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	d.mu.Lock()
	if d.cancel != nil {
		d.mu.Unlock()
		cancel()
		return // already replaying
	}
	d.cancel, d.done = cancel, done
	d.mu.Unlock()
	cfg := ingest.ReplayConfig{
		Files:        f.occupancy,
		Devices:      f.opts.DevicesPerAgent,
		DevicePrefix: n.name + "-room-",
		Speedup:      f.opts.Speedup,
		Broker:       broker,
		ClientID:     "sim-devices-" + n.name,
		Logger:       f.opts.AgentLogger.With("devices", n.name),
	}
	go func() {
		defer close(done)
		st, err := ingest.Replay(ctx, cfg)
		d.mu.Lock()
		defer d.mu.Unlock()
		d.stats.Devices = max(d.stats.Devices, st.Devices)
		d.stats.Messages += st.Messages
		d.stats.Readings += st.Readings
		if err != nil && !errors.Is(err, context.Canceled) {
			d.lastErr = fmt.Errorf("sim: devices of %s: %w", n.name, err)
			f.opts.Logger.Warn("device replay stopped", "agent", n.name, "err", err)
		}
	}()
}

// stop ends the replay and waits for it.
func (d *devices) stop() {
	d.mu.Lock()
	cancel, done := d.cancel, d.done
	d.cancel, d.done = nil, nil
	d.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

func (d *devices) snapshot() (ingest.ReplayStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats, d.lastErr
}
