package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

func TestBenchIngestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "ingest", "--messages", "0"},
		{"bench", "ingest", "--rate", "-1"},
		{"bench", "ingest", "--duration", "100ms"},
		{"bench", "ingest", "--malformed", "10", "--messages", "5"},
		{"bench", "ingest", "--skip-backlog", "--skip-latency"},
		{"bench", "ingest", "--embedded", "--embedded-publishers", "0"},
		{"bench", "crdt", "--embedded"},
		{"bench", "ingest-agent-process", "--dir", "/tmp"},
		{"bench", "ingest", "--broker", "http://x:1"},
		{"bench", "ingest", "--ops", "5"},
		{"bench", "crdt", "--broker", "tcp://127.0.0.1:1883"},
		{"bench", "crypto", "--cpu-clock"},
		{"bench", "ml", "--messages", "5"},
		{"bench", "nope"},
	} {
		if r := runAgent(t, args...); r.code != 2 {
			t.Errorf("%v: exit %d, stderr %s", args, r.code, r.stderr)
		}
	}
}

func TestBenchIngestUnreachableBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := runAgent(t, "bench", "ingest", "--broker", "tcp://"+addr, "--skip-backlog", "--duration", "1s", "--dir", t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "edge-agent: bench: ingest: ") || !strings.Contains(r.stderr, "connect") {
		t.Fatalf("%+v", r)
	}
}

// TestBenchIngestTiny runs the suite against a Mosquitto it starts
// (skipped when mosquitto is not installed): the JSON report has the
// shared shape.
func TestBenchIngestTiny(t *testing.T) {
	if _, err := mqtttest.Binary(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	out := mustAgent(t, "bench", "ingest", "--messages", "200", "--rounds", "1", "--devices", "2", "--skip-latency", "--no-mosquitto-sub", "--dir", t.TempDir(), "--json")
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.Suite != "ingest" || !strings.Contains(rep.Machine["broker"], "started by the bench") || !strings.Contains(rep.Machine["workload"], "backlog=200") {
		t.Fatalf("report: %+v", rep)
	}
	names := []string{}
	for _, r := range rep.Results {
		names = append(names, r.Name)
	}
	if strings.Join(names, ",") != "ingest_backlog_drain,ingest_backlog_drain_vs_buffered_bare,ingest_commit_batch" {
		t.Fatalf("results %v", names)
	}
	if d := rep.Results[0]; d.Value <= 0 || d.Baseline == nil || d.Baseline.Value <= 0 || d.Ratio <= 0 {
		t.Fatalf("drain: %+v", d)
	}

	// The human table names the broker and the figures.
	out = mustAgent(t, "bench", "ingest", "--messages", "100", "--rounds", "1", "--skip-latency", "--no-mosquitto-sub", "--dir", t.TempDir())
	for _, want := range []string{"suite ingest", "broker: mosquitto", "ingest_backlog_drain", "paho_bare_drain"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchMLTiny(t *testing.T) {
	out := mustAgent(t, "bench", "ml", "--rounds", "1", "--cpu-clock", "--json")
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.Suite != "ml" || !strings.Contains(rep.Machine["workload"], "clock=process-cpu") || len(rep.Results) != 10 {
		t.Fatalf("report: %+v", rep)
	}
	if r := rep.Results[0]; r.Name != "ml_train_step_mlp_43x64x6_b256" || r.Baseline == nil || r.Baseline.Name != "gonum_train_step_mlp_43x64x6_b256" {
		t.Fatalf("first result: %+v", r)
	}
}
