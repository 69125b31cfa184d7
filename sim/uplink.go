package sim

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// waitOnline waits until the control plane's registry shows every agent
// online and returns, per agent, the seconds from its start until then.
func (f *Fleet) waitOnline(ctx context.Context) ([]float64, error) {
	at := make([]float64, len(f.nodes))
	for i := range at {
		at[i] = -1
	}
	deadline := time.Now().Add(f.opts.Timeout)
	for {
		reg, err := f.cp.agents(ctx)
		if err != nil {
			return nil, err
		}
		done := true
		for i, n := range f.nodes {
			if at[i] >= 0 {
				continue
			}
			if a, ok := reg[n.name]; ok && a.State == cpapi.StateOnline {
				at[i] = time.Since(n.started).Seconds()
			} else {
				done = false
			}
		}
		if done {
			return at, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sim: not every agent was online at the control plane within %s", f.opts.Timeout)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// stored returns the readings an agent has committed since it was first
// started (0 without ingestion).
func (n *node) stored(ctx context.Context) (stored, dead int64, err error) {
	in := n.ag.Ingest()
	if in == nil {
		return 0, 0, nil
	}
	st, err := in.Store().Stats(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("sim: ingest stats of %s: %w", n.name, err)
	}
	return st.StoredTotal, st.DeadLetters, nil
}

// runOutage cuts every agent off from the control plane for Options.Outage
// of simulated time, reconnects them, and measures how they resume.
func (f *Fleet) runOutage(ctx context.Context) (*OutageReport, error) {
	o := f.opts
	rep := &OutageReport{TimeScale: o.TimeScale}
	before, err := f.totalStored(ctx)
	if err != nil {
		return nil, err
	}
	f.opts.Logger.Info("control plane outage", "simulated", o.Outage, "time_scale", o.TimeScale)
	simStart, realStart := f.clock.Now(), time.Now()
	f.outage.on.Store(true)
	if err := sleep(ctx, time.Duration(float64(o.Outage)/o.TimeScale)); err != nil {
		f.outage.on.Store(false)
		return nil, err
	}
	reg, err := f.cp.agents(ctx)
	if err != nil {
		f.outage.on.Store(false)
		return nil, err
	}
	for _, n := range f.nodes {
		if reg[n.name].State == cpapi.StateOffline {
			rep.OfflineAtEnd++
		}
	}
	// The readings stored up to now must all reach the control plane.
	want := make([]int64, len(f.nodes))
	for i, n := range f.nodes {
		if want[i], _, err = n.stored(ctx); err != nil {
			f.outage.on.Store(false)
			return nil, err
		}
	}
	var after int64
	for _, w := range want {
		after += w
	}
	rep.ReadingsDuringOutage = after - before
	healSim := f.clock.Now()
	f.outage.on.Store(false)
	rep.SimSeconds = round(healSim.Sub(simStart).Seconds())
	rep.RealSeconds = round(time.Since(realStart).Seconds())
	f.opts.Logger.Info("control plane reachable again; waiting for heartbeats and uploads", "readings_during_outage", rep.ReadingsDuringOutage, "offline_in_registry", rep.OfflineAtEnd)

	resume := make([]float64, len(f.nodes))
	for i := range resume {
		resume[i] = -1
	}
	caughtUp := -1.0
	deadline := time.Now().Add(o.Timeout)
	for {
		done := true
		for i, n := range f.nodes {
			if resume[i] < 0 {
				if n.ag.Uplink().Status().LastHeartbeat.After(healSim) {
					resume[i] = f.clock.Now().Sub(healSim).Seconds()
				} else {
					done = false
				}
			}
		}
		if caughtUp < 0 {
			ok, err := f.holds(ctx, want)
			if err != nil {
				return nil, err
			}
			if ok {
				caughtUp = f.clock.Now().Sub(healSim).Seconds()
			} else {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sim: after the outage, agents had not resumed heartbeats and uploads within %s", o.Timeout)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
	rep.ResumeSeconds = percentiles(resume)
	rep.UploadCatchUpSeconds = round(caughtUp)
	f.opts.Logger.Info("resumed after outage", "heartbeat_p99_sim_seconds", rep.ResumeSeconds.P99, "uploads_caught_up_sim_seconds", rep.UploadCatchUpSeconds)
	return rep, nil
}

func (f *Fleet) totalStored(ctx context.Context) (int64, error) {
	var t int64
	for _, n := range f.nodes {
		s, _, err := n.stored(ctx)
		if err != nil {
			return 0, err
		}
		t += s
	}
	return t, nil
}

// holds reports whether the control plane holds at least want[i] readings
// of every agent i.
func (f *Fleet) holds(ctx context.Context, want []int64) (bool, error) {
	for i, n := range f.nodes {
		if want[i] == 0 {
			continue
		}
		id := n.ag.Uplink().Status().AgentID
		if id == "" {
			return false, nil
		}
		got, err := f.cp.readings(ctx, id, f.clock.Now())
		if err != nil {
			return false, err
		}
		if got < want[i] {
			return false, nil
		}
	}
	return true, nil
}

// finishUplink stops the devices, waits until every stored reading has
// reached the control plane, and fills the control plane and devices
// parts of the report.
func (f *Fleet) finishUplink(ctx context.Context, rep *Report) error {
	f.stopDevices()
	if f.DevicesEnabled() {
		d := &DevicesReport{Synthetic: f.synthetic}
		for _, n := range f.nodes {
			st, err := n.devs.snapshot()
			if err != nil {
				return err
			}
			d.Devices += st.Devices
			d.Messages += st.Messages
		}
		// Let the agents commit what the devices sent last.
		if err := f.waitIngestIdle(ctx); err != nil {
			return err
		}
		// Poll until every agent's stored readings equal what the control
		// plane holds for it (both read afresh each round: a message the
		// broker had not yet delivered may still be committed meanwhile).
		t0 := time.Now()
		deadline := t0.Add(f.opts.Timeout)
		for {
			equal := true
			d.StoredAtAgents, d.DeadLetters, d.AtControlPlane, d.Duplicates, d.Missing = 0, 0, 0, 0, 0
			for _, n := range f.nodes {
				stored, dead, err := n.stored(ctx)
				if err != nil {
					return err
				}
				d.StoredAtAgents += stored
				d.DeadLetters += dead
				if f.cp == nil {
					continue
				}
				var got int64
				if id := n.ag.Uplink().Status().AgentID; id != "" {
					if got, err = f.cp.readings(ctx, id, f.clock.Now()); err != nil {
						return err
					}
				}
				d.AtControlPlane += got
				if got > stored {
					d.Duplicates += got - stored
				} else {
					d.Missing += stored - got
				}
				// A batch stored but not yet acknowledged (its answer lost)
				// is sent again: wait for that too.
				pending, err := n.outboxPending(ctx)
				if err != nil {
					return err
				}
				if got != stored || pending != 0 {
					equal = false
					if time.Now().After(deadline) {
						f.opts.Logger.Warn("control plane and agent disagree on the agent's readings", "agent", n.name, "stored", stored, "at_control_plane", got, "outbox_batches", pending)
					}
				}
			}
			if equal || time.Now().After(deadline) {
				break
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
		if f.cp != nil {
			d.DrainSeconds = round(time.Since(t0).Seconds())
			// The counts above only tell when the uploads drained (the
			// control plane holds one row per series and time, however
			// often it stored it): compare reading by reading.
			var err error
			if d.Delivery, err = f.checkDelivery(ctx); err != nil {
				return err
			}
			d.Duplicates, d.Missing = d.Delivery.StoredTwice, d.Delivery.Missing+d.Delivery.OtherValue
			if err := d.Delivery.Err(); err != nil {
				f.opts.Logger.Warn("device telemetry", "err", err)
			}
		}
		rep.Devices = d
		f.opts.Logger.Info("device telemetry", "messages", d.Messages, "stored", d.StoredAtAgents, "at_control_plane", d.AtControlPlane, "duplicates", d.Duplicates, "missing", d.Missing)
	}
	if f.cp != nil {
		// The control plane's clock may run faster than real time
		// (TimeScale): a heartbeat that comes late in real time, on a
		// loaded machine, shows its agent offline for a moment. Count
		// once every enrolled agent is online again, or at the phase
		// timeout.
		deadline := time.Now().Add(f.opts.Timeout)
		for {
			reg, err := f.cp.agents(ctx)
			if err != nil {
				return err
			}
			enrolled, online := 0, 0
			for _, n := range f.nodes {
				if a, ok := reg[n.name]; ok {
					enrolled++
					if a.State == cpapi.StateOnline {
						online++
					}
				}
			}
			if online == enrolled || time.Now().After(deadline) {
				rep.ControlPlane.Enrolled, rep.ControlPlane.Online = enrolled, online
				break
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitIngestIdle waits until no agent holds received, unacknowledged
// messages.
func (f *Fleet) waitIngestIdle(ctx context.Context) error {
	deadline := time.Now().Add(f.opts.Timeout)
	for {
		busy := false
		for _, n := range f.nodes {
			if in := n.ag.Ingest(); in != nil && in.Stats().Pending > 0 {
				busy = true
			}
		}
		if !busy {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sim: agents still committing device messages after %s", f.opts.Timeout)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
