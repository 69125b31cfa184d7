package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent/deferred"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// Kinds of deferrable work (label of the edgefleet_green_* metrics).
const (
	workTraining   = "training"
	workCompaction = "compaction"
	workUpload     = "upload"
	workUpdate     = "update"
)

// Utilisation of the device while a kind of work runs, for its energy
// estimate: training keeps a core busy; compaction is mostly SQLite I/O.
const (
	trainingUtilisation   = 1.0
	compactionUtilisation = 0.3
	uploadUtilisation     = 0.2
	updateUtilisation     = 0.5
)

// greenParts is the agent's deferrable-work scheduler.
type greenParts struct {
	sched *deferred.Scheduler
	// lastCompaction is how long the last compaction ran (nanoseconds),
	// the next one's expected duration.
	lastCompaction atomic.Int64
	// lastUpload is how long the last bulk upload ran (nanoseconds).
	lastUpload atomic.Int64
}

// Green is the scheduler of deferrable work; nil before Start.
func (a *Agent) Green() *deferred.Scheduler {
	if g := a.green.Load(); g != nil {
		return g.sched
	}
	return nil
}

// startGreen builds the scheduler: the carbon provider (reading its trace
// or credential files), the power profile and the battery source.
func (a *Agent) startGreen() error {
	gc := a.cfg.Green
	cfg := deferred.Config{
		Zone: gc.Zone, Profile: gc.Profile, MinBattery: gc.MinBattery, BatteryRecheck: gc.BatteryRecheck,
		Battery: gc.batteryState, Clock: a.clk, Logger: a.log, Registry: a.reg,
	}
	if p := a.deps.CarbonProvider; p != nil {
		cfg.Provider = p
	} else if gc.carbonEnabled() {
		pc := gc.providerConfig()
		pm, err := provider.NewMetrics(a.reg)
		if err != nil {
			return err
		}
		p, err := provider.New(pc, provider.Options{Clock: a.clk, Logger: a.log, Metrics: pm})
		if err != nil {
			return err
		}
		cfg.Provider, cfg.Zone = p, pc.Zone
	}
	s, err := deferred.New(cfg)
	if err != nil {
		return err
	}
	a.green.Store(&greenParts{sched: s})
	return nil
}

// deferCompaction holds a due compaction until the scheduler's start within
// green.compaction_window (replication.Config.Defer).
func (a *Agent) deferCompaction(ctx context.Context) (func(), error) {
	g := a.green.Load()
	if g == nil {
		return func() {}, nil
	}
	expected := max(time.Duration(g.lastCompaction.Load()), time.Second)
	var latest time.Time
	if w := a.cfg.Green.CompactionWindow; w > 0 {
		latest = a.clk.Now().Add(w)
	}
	run, err := g.sched.Wait(ctx, deferred.Request{Kind: workCompaction, ID: "state", Duration: expected,
		Utilisation: compactionUtilisation, Latest: latest})
	if err != nil {
		return nil, err
	}
	return func() {
		g.lastCompaction.Store(int64(a.clk.Now().Sub(run.Start)))
		run.Done()
	}, nil
}

// deferUpload holds the upload of the telemetry waiting in the outbox
// until the scheduler's start within green.upload_window
// (uplink.Deps.DeferUpload); done is called when the outbox is drained.
func (a *Agent) deferUpload(ctx context.Context) (func(), error) {
	g := a.green.Load()
	if g == nil {
		return func() {}, nil
	}
	expected := max(time.Duration(g.lastUpload.Load()), time.Second)
	run, err := g.sched.Wait(ctx, deferred.Request{Kind: workUpload, ID: "telemetry", Duration: expected,
		Utilisation: uploadUtilisation, Latest: a.clk.Now().Add(a.cfg.Green.UploadWindow)})
	if err != nil {
		return nil, err
	}
	return func() {
		g.lastUpload.Store(int64(a.clk.Now().Sub(run.Start)))
		run.Done()
	}, nil
}

// deferModelUpdate holds the install of newly assigned models until the
// scheduler's start within green.update_window
// (uplink.Deps.DeferModelUpdate).
func (a *Agent) deferModelUpdate(ctx context.Context) (func(), error) {
	g := a.green.Load()
	if g == nil {
		return func() {}, nil
	}
	run, err := g.sched.Wait(ctx, deferred.Request{Kind: workUpdate, ID: "models", Duration: a.cfg.Green.UpdateDuration,
		Utilisation: updateUtilisation, Latest: a.clk.Now().Add(a.cfg.Green.UpdateWindow)})
	if err != nil {
		return nil, err
	}
	return run.Done, nil
}

// deferTraining holds a training job until the scheduler's start before
// latest (zero: now) (training.Config.Defer).
func (a *Agent) deferTraining(ctx context.Context, id string, latest time.Time, expected time.Duration) (func(), error) {
	g := a.green.Load()
	if g == nil {
		return func() {}, nil
	}
	if expected <= 0 {
		expected = a.cfg.Green.TrainingDuration
	}
	run, err := g.sched.Wait(ctx, deferred.Request{Kind: workTraining, ID: id, Duration: expected,
		Utilisation: trainingUtilisation, Latest: latest})
	if err != nil {
		return nil, err
	}
	return run.Done, nil
}

// energyReport is the heartbeat's energy part: zone, intensity now and
// battery (nil before Start).
func (a *Agent) energyReport() *cpapi.Energy {
	g := a.green.Load()
	if g == nil {
		return nil
	}
	st := g.sched.Status(context.Background())
	e := &cpapi.Energy{Zone: a.cfg.Green.Zone, Intensity: st.Intensity, IntensityStale: st.Stale}
	if st.Intensity != nil {
		at := st.At.UTC()
		e.IntensityAt = &at
	}
	if b := st.Battery; b != nil {
		e.Battery = &cpapi.Battery{Present: b.Present, Level: b.Level, Charging: b.Charging}
	}
	return e
}
