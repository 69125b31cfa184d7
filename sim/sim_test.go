package sim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// dataSets is the shared data directory, or "" (devices are skipped) when
// it is absent, as in a fresh clone.
func dataSets(t *testing.T) string {
	d := os.Getenv("EDGEFLEET_DATA")
	if d == "" {
		d = filepath.Join("..", "..", "shared", "data")
	}
	if _, err := ingest.OccupancyFiles(d); err != nil {
		t.Logf("occupancy data set not found under %s: the fleet's devices are synthetic", d)
		return ""
	}
	return d
}

// TestRunConverges plays the whole scenario on a small fleet with fast
// timers: writes, partition with writes on both sides, heal, kill and
// restart. It must end with one state hash equal to the oracle's.
func TestRunConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sets := dataSets(t)
	warnings := &testutil.SyncBuffer{} // the run's warnings, shown if a check fails
	rep, err := Run(ctx, Options{
		Logger:         slog.New(slog.NewTextHandler(warnings, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Agents:         6,
		Partition:      3 * time.Second,
		WritesPerAgent: 15,
		Idle:           time.Second,
		Profile:        "test",
		DataDir:        t.TempDir(),
		Timeout:        60 * time.Second,
		// A 10-minute control plane outage, 60 times faster than real time.
		Outage:          10 * time.Minute,
		TimeScale:       60,
		DevicesPerAgent: 2,
		DataSets:        sets,
		// Both keys rotated every 5 s for 10 s while agents write and ingest.
		Rotate:      5 * time.Second,
		RotateFor:   10 * time.Second,
		RotateGrace: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if cp := rep.ControlPlane; cp == nil || cp.Enrolled != 6 || cp.Online != 6 {
		t.Fatalf("control plane: %+v", rep.ControlPlane)
	}
	if o := rep.Outage; o == nil || o.SimSeconds < 600 || o.OfflineAtEnd != 6 || o.ResumeSeconds.Max <= 0 {
		t.Fatalf("outage: %+v", rep.Outage)
	}
	if k := rep.Rotation; k != nil {
		t.Logf("rotation: %d of %d membership samples with a suspect member (baseline %d of %d)", k.SuspectSamples, k.Samples, k.BaselineSuspects, k.BaselineSamples)
	}
	if k := rep.Rotation; k == nil || k.Rotations < 2 || k.SplitSamples != 0 || k.GossipDecryptFailures != 0 || k.UploadsRefused != 0 || k.AgentsOnGossipPrimary != 6 {
		t.Fatalf("rotation under load: %+v\nthe run's warnings:\n%s", rep.Rotation, warnings)
	}
	if d := rep.Devices; d == nil {
		t.Fatal("no devices report")
	} else if err := d.Delivery.Err(); err != nil || d.Synthetic != (sets == "") || d.Devices != 6*2 || d.StoredAtAgents == 0 || d.Duplicates != 0 || d.Missing != 0 || d.AtControlPlane != d.StoredAtAgents || d.Delivery.Sent != d.StoredAtAgents {
		t.Fatalf("device telemetry not delivered exactly once: %v: %+v %+v", err, d, d.Delivery)
	}
	if !rep.Converged || rep.DistinctStateHashes != 1 {
		t.Fatalf("not converged: %+v", rep)
	}
	if rep.Writes != 6*15+6*15+5*15+rep.Rotation.Writes {
		t.Fatalf("writes = %d", rep.Writes)
	}
	if rep.GossipBytesPerAgentPerSecond <= 0 {
		t.Fatalf("no gossip traffic measured: %+v", rep)
	}
	t.Logf("report: %+v", rep)
}

// TestServeSyntheticDevices is `make sim` on a fresh clone: no data sets.
// The devices are synthetic, say so in their ids, and their readings reach
// the control plane, where `edgectl telemetry query` finds them.
func TestServeSyntheticDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	noData := filepath.Join(t.TempDir(), "no-data-here")
	ready := make(chan ServeInfo, 1)
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Options{Agents: 2, Profile: "test", DataDir: t.TempDir(), DataSets: noData, DevicesPerAgent: 2, Speedup: 600},
			func(info ServeInfo) error { ready <- info; return nil })
	}()
	var info ServeInfo
	select {
	case info = <-ready:
	case err := <-served:
		t.Fatalf("serve ended before the fleet was ready: %v", err)
	}
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	if !info.Synthetic || info.Devices != 4 || info.DataSets != noData {
		t.Fatalf("serve info: %d devices, synthetic %v, data sets %q", info.Devices, info.Synthetic, info.DataSets)
	}
	client, err := cpapi.NewClient(cpapi.ClientConfig{URL: info.ControlPlaneURL, Token: info.AdminToken, CAPEM: info.CAPEM})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, a := range []string{"agent-000", "agent-001"} {
		for _, k := range []string{"0", "1"} {
			for _, m := range []string{"temperature", "humidity", "light", "co2", "humidity_ratio", "occupancy"} {
				want[a+"-synthetic-room-"+k+" "+m] = true
			}
		}
	}
	for {
		now := time.Now()
		res, err := client.QueryTelemetry(ctx, cpapi.TelemetryQuery{From: now.Add(-time.Hour), To: now.Add(time.Minute), Bucket: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, s := range res.Series {
			got[s.Device+" "+s.Metric] = true
		}
		missing := 0
		for k := range want {
			if !got[k] {
				missing++
			}
		}
		if missing == 0 && len(got) == len(want) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the control plane holds the series %v, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgentsSendDifferentValues: each agent's devices start elsewhere in
// the data (or in their synthetic rooms' day), so the fleet does not send
// ten copies of the same readings.
func TestAgentsSendDifferentValues(t *testing.T) {
	cases := []string{""} // synthetic devices
	if d := dataSets(t); d != "" {
		cases = append(cases, d)
	}
	for _, sets := range cases {
		f := &Fleet{opts: Options{DevicesPerAgent: 3, Speedup: 60, Seed: 1}}
		if sets == "" {
			f.synthetic = true
		} else {
			files, err := ingest.OccupancyFiles(sets)
			if err != nil {
				t.Fatal(err)
			}
			f.occupancy = files
		}
		_ = f.opts.setDefaults()
		first := map[string]string{} // values (time stripped) -> the device that sent them
		for i := range 10 {
			n := &node{idx: i, name: fmt.Sprintf("agent-%03d", i)}
			cfg := f.replayConfig(n)
			cfg.Rows = 1
			cfg.Publish = func(topic string, p []byte) error {
				if f.synthetic != strings.Contains(topic, "-synthetic-room-") || !strings.Contains(topic, n.name) {
					t.Errorf("device topic %s", topic)
				}
				v := string(p)
				v = v[strings.Index(v, `"n":`):]
				if other, ok := first[v]; ok {
					t.Errorf("%s and %s both sent %s first", other, topic, v)
				}
				first[v] = topic
				return nil
			}
			if _, err := ingest.Replay(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
		}
		if len(first) != 30 {
			t.Fatalf("synthetic %v: %d distinct first messages of 30 devices", f.synthetic, len(first))
		}
	}
}

func TestOptionsRejectNonsense(t *testing.T) {
	for _, o := range []Options{{Agents: 1}, {Agents: 1000}, {Agents: 3, Partition: -time.Second}} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("Run(%+v) accepted", o)
		}
	}
}

func TestPercentiles(t *testing.T) {
	p := percentiles([]float64{5, 1, 3, 2, 4})
	if p.P50 != 3 || p.Max != 5 || p.P99 != 5 {
		t.Fatalf("%+v", p)
	}
	if (percentiles(nil) != Percentiles{}) {
		t.Fatal("empty input")
	}
}
