package sim

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// RotationReport describes the key rotation phase: the data key
// "telemetry" and the gossip key rotated every Interval while agents
// write, gossip and ingest.
type RotationReport struct {
	Seconds   float64 `json:"seconds"`
	Interval  float64 `json:"interval_seconds"`
	Rotations int     `json:"rotations"` // of each key
	// InstallGrace and RemoveGrace are the gossip key policy: a new
	// version becomes primary InstallGrace after its creation, and the
	// versions before it leave RemoveGrace later.
	InstallGrace float64 `json:"install_grace_seconds"`
	RemoveGrace  float64 `json:"remove_grace_seconds"`
	// TelemetryVersion and GossipVersion are the keys' primary versions
	// at the end; AgentsOnGossipPrimary counts agents whose keyring
	// primary is GossipVersion once the last rotation has activated.
	TelemetryVersion      uint32 `json:"telemetry_key_version"`
	GossipVersion         uint32 `json:"gossip_key_version"`
	AgentsOnGossipPrimary int    `json:"agents_on_gossip_primary"`
	// Samples counts membership checks during the phase; SplitSamples
	// those in which some agent saw another dead, left or not at all
	// (must be 0: one cluster throughout); SuspectSamples those in which
	// some agent suspected another and none was out (memberlist suspects
	// a slow member now and then on a loaded machine; a suspect is still
	// a member and refutes). MinAlive is the fewest agents some agent saw
	// alive.
	Samples        int `json:"membership_samples"`
	SplitSamples   int `json:"split_samples"`
	SuspectSamples int `json:"suspect_samples"`
	MinAlive       int `json:"min_alive_seen"`
	// Baseline* are the same checks over a window of the same load
	// (writes, devices) just before the first rotation, without rotating:
	// they tell splits caused by the machine's load from those caused by
	// rotation.
	BaselineSeconds      float64 `json:"baseline_seconds"`
	BaselineSamples      int     `json:"baseline_samples"`
	BaselineSplitSamples int     `json:"baseline_split_samples"`
	BaselineSuspects     int     `json:"baseline_suspect_samples"`
	BaselineMinAlive     int     `json:"baseline_min_alive_seen"`
	// GossipDecryptFailures is gossip traffic no installed key could
	// open; UploadsRefused is telemetry uploads the control plane refused
	// (an envelope it could not open among them). Both must be 0.
	GossipDecryptFailures float64 `json:"gossip_decrypt_failures"`
	UploadsRefused        float64 `json:"uploads_refused"`
	// Writes is the replicated writes made during the phase; the run's
	// final convergence check covers them.
	Writes int `json:"writes"`
}

// runRotation rotates both keys every o.Rotate for o.RotateFor while every
// agent writes once a second and the devices keep sending.
func (f *Fleet) runRotation(ctx context.Context) (*RotationReport, error) {
	o := f.opts
	rep := &RotationReport{Interval: o.Rotate.Seconds(), MinAlive: len(f.nodes), BaselineMinAlive: len(f.nodes)}
	var rotating atomic.Bool
	c := f.cp.client
	// New gossip versions become primary InstallGrace (real time) after
	// creation, so every agent has fetched and installed them before
	// anyone encrypts with them; older ones leave RemoveGrace after that.
	// In one process every agent's key store shares one disk (each
	// accepted version is a synced write), so fetches of a whole
	// simulated fleet take seconds: Options.RotateGrace defaults to 20 s.
	// The policy is in the control plane's (possibly compressed) time.
	scaled := func(d time.Duration) string { return time.Duration(float64(d) * o.TimeScale).String() }
	pol := cpapi.KeyPolicy{AllAgents: true, InstallGrace: scaled(o.RotateGrace), RemoveGrace: scaled(o.RotateGrace), RotationPeriod: "off"}
	rep.InstallGrace, rep.RemoveGrace = o.RotateGrace.Seconds(), o.RotateGrace.Seconds()
	if _, err := c.SetKeyPolicy(ctx, cpapi.GossipKeyName, pol); err != nil {
		return nil, fmt.Errorf("sim: gossip key policy: %w", err)
	}
	beforeDecrypt, beforeRefused := f.decryptFailures(), f.uploadsRefused()

	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var writes atomic.Int64
	// Every agent writes once a second.
	for _, n := range f.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if sleep(pctx, time.Second) != nil {
					return
				}
				if n.ag.Put(pctx, collKV, fmt.Sprintf("rot-%s", n.name), []byte(fmt.Sprintf(`{"n":%d}`, i))) == nil {
					writes.Add(1)
				}
			}
		}()
	}
	// Membership sampler.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sleep(pctx, 250*time.Millisecond) == nil {
			views := make([][]agent.Member, len(f.nodes))
			for i, n := range f.nodes {
				views[i] = n.ag.Members()
			}
			split, suspect, least := classifyViews(views, len(f.nodes))
			if split {
				f.logSplit(views, rotating.Load())
			}
			samples, splits, suspects, minAlive := &rep.BaselineSamples, &rep.BaselineSplitSamples, &rep.BaselineSuspects, &rep.BaselineMinAlive
			if rotating.Load() {
				samples, splits, suspects, minAlive = &rep.Samples, &rep.SplitSamples, &rep.SuspectSamples, &rep.MinAlive
			}
			*samples++
			*minAlive = min(*minAlive, least)
			switch {
			case split:
				*splits++
			case suspect:
				*suspects++
			}
		}
	}()
	var rotErr error
	baseStart := time.Now()
	if err := sleep(ctx, o.RotateGrace); err != nil {
		stop()
		wg.Wait()
		return nil, err
	}
	rep.BaselineSeconds = round(time.Since(baseStart).Seconds())
	rotating.Store(true)
	start := time.Now()
	for time.Since(start) < o.RotateFor {
		if err := sleep(ctx, o.Rotate); err != nil {
			rotErr = err
			break
		}
		tk, err := c.RotateKey(ctx, cpapi.TelemetryKeyName)
		if err != nil {
			rotErr = fmt.Errorf("sim: rotate telemetry key: %w", err)
			break
		}
		gk, err := c.RotateKey(ctx, cpapi.GossipKeyName)
		if err != nil {
			rotErr = fmt.Errorf("sim: rotate gossip key: %w", err)
			break
		}
		rep.Rotations++
		rep.TelemetryVersion, rep.GossipVersion = tk.PrimaryVersion, gk.LatestVersion
		f.opts.Logger.Info("rotated keys", "telemetry", tk.PrimaryVersion, "gossip", gk.LatestVersion)
	}
	// Let the last gossip version activate and the old ones leave,
	// still under load and sampling.
	if rotErr == nil {
		rotErr = sleep(ctx, 2*o.RotateGrace+5*time.Second)
	}
	stop()
	wg.Wait()
	if rotErr != nil {
		return nil, rotErr
	}
	rep.Seconds = round(time.Since(start).Seconds())
	rep.Writes = int(writes.Load())
	for _, n := range f.nodes {
		if v, ok := gaugeValue(n.ag.Registry(), "edgefleet_gossip_keyring_primary_version"); ok && uint32(v) == rep.GossipVersion {
			rep.AgentsOnGossipPrimary++
		}
	}
	rep.GossipDecryptFailures = f.decryptFailures() - beforeDecrypt
	rep.UploadsRefused = f.uploadsRefused() - beforeRefused
	f.opts.Logger.Info("key rotation under load", "rotations", rep.Rotations, "split_samples", rep.SplitSamples, "suspect_samples", rep.SuspectSamples, "baseline_split_samples", rep.BaselineSplitSamples,
		"gossip_decrypt_failures", rep.GossipDecryptFailures, "uploads_refused", rep.UploadsRefused,
		"agents_on_gossip_primary", rep.AgentsOnGossipPrimary)
	return rep, nil
}

// decryptFailures sums, over the agents, gossip traffic rejected because
// no installed key could open it.
func (f *Fleet) decryptFailures() float64 {
	var t float64
	for _, n := range f.nodes {
		if n.ag != nil {
			t += counterValue(n.ag.Registry(), "edgefleet_gossip_rejected_total", "reason", "decrypt_failed")
		}
	}
	return t
}

// uploadsRefused sums, over the agents, telemetry uploads the control plane
// refused.
func (f *Fleet) uploadsRefused() float64 {
	var t float64
	for _, n := range f.nodes {
		if n.ag != nil {
			t += counterValue(n.ag.Registry(), "edgefleet_uplink_requests_total", "op", "upload", "result", "rejected")
		}
	}
	return t
}

// logSplit says, for a split sample, which agent saw which members how:
// a split's cause is read from these.
func (f *Fleet) logSplit(views [][]agent.Member, rotating bool) {
	for i, v := range views {
		var out []string
		for _, m := range v {
			if m.State != "alive" {
				out = append(out, m.Name+"="+m.State)
			}
		}
		if len(out) > 0 || len(v) != len(f.nodes) {
			f.opts.Logger.Warn("sim: membership split seen", "rotating", rotating, "agent", f.nodes[i].ag.Name(), "members", len(v), "not_alive", out)
		}
	}
}

// classifyViews reads one membership sample of a fleet of n agents, each
// agent's view of the members: split when some agent sees fewer than n
// members alive or suspect (one dead, left or unknown), suspect when some
// agent suspects a member; least is the fewest alive in any view.
func classifyViews(views [][]agent.Member, n int) (split, suspect bool, least int) {
	least = n
	for _, v := range views {
		alive, suspected := 0, 0
		for _, m := range v {
			switch m.State {
			case "alive":
				alive++
			case "suspect":
				suspected++
			}
		}
		least = min(least, alive)
		split = split || alive+suspected != n
		suspect = suspect || suspected > 0
	}
	return split, suspect, least
}
