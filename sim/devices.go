package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
)

// devices are the simulated devices of one agent, publishing over real
// MQTT to the agent's broker: a replay of the occupancy data set, or
// synthetic rooms where the data set is absent. A replay stops with the
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
	cfg := f.replayConfig(n)
	cfg.Broker = broker
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

// agentRowStride is how many rows (data minutes) further into the data each
// agent's devices start than the previous agent's: a prime, about 9.6 hours,
// so agents start at different times of day and, up to 2665 agents (the
// shortest file's rows), at different rows of every file.
const agentRowStride = 577

// replayConfig is what node n's devices send, to an unset broker: the
// occupancy data set, or synthetic rooms (named so) without it, starting
// agentRowStride rows per agent index into the data so that no two agents
// send the same values.
func (f *Fleet) replayConfig(n *node) ingest.ReplayConfig {
	cfg := ingest.ReplayConfig{
		Files:        f.occupancy,
		Devices:      f.opts.DevicesPerAgent,
		Offset:       n.idx * agentRowStride,
		DevicePrefix: n.name + "-room-",
		Speedup:      f.opts.Speedup,
		ClientID:     "sim-devices-" + n.name,
		// The devices stamp readings in the agents' time, which is the
		// system clock's: on f.clock, scaled, they would be from the future.
		Clock:  clock.Real(),
		Logger: f.opts.AgentLogger.With("devices", n.name),
	}
	if f.synthetic {
		cfg.Synthetic = true
		cfg.Seed = f.opts.Seed*1_000_003 + uint64(n.idx)
		cfg.DevicePrefix = n.name + "-synthetic-room-"
	}
	return cfg
}
