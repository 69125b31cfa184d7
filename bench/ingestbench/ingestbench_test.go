package ingestbench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

var (
	full     = flag.Bool("ingestbench", false, "run the full ingestion measurement (200,000-message backlog, 10 s at 5,000 msg/s) against a local Mosquitto")
	messages = flag.Int("ingestbench.messages", 0, "backlog size (default 200000 with -ingestbench)")
	rounds   = flag.Int("ingestbench.rounds", 0, "interleaved rounds (default 3)")
	bad      = flag.Int("ingestbench.malformed", 0, "malformed payloads mixed into each backlog")
	batch    = flag.Int("ingestbench.batch", 0, "ingestor BatchMessages (default: the ingestor's)")
)

func startBroker(t *testing.T) *mqtttest.Mosquitto {
	t.Helper()
	m, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir()})
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		t.Skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients): skipping")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })
	return m
}

// TestRunSmall runs every part of the measurement at a small size, so
// the code that produces the published figures is itself tested.
func TestRunSmall(t *testing.T) {
	m := startBroker(t)
	o := Options{Broker: m.URL(), Messages: 2000, Malformed: 100, Rounds: 1, Rate: 500, Duration: 2 * time.Second, Dir: t.TempDir(), Embedded: true,
		AgentCommand: helperAgent}
	if *full {
		o = Options{Broker: m.URL(), Messages: *messages, Rounds: *rounds, Dir: t.TempDir(), SkipLatency: *onlyBacklog, SkipBacklog: *onlyLatency, Malformed: *bad, BatchMessages: *batch,
			Embedded: *withEmbedded, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
		if *drainProfile != "" {
			f, err := os.Create(*drainProfile)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			o.CPUProfile = f
		}
	}
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(res, "", "  ")
	t.Logf("%s", out)
	if !o.SkipBacklog && (res.DurableRate <= 0 || res.BareRate <= 0) || !o.SkipLatency && (res.LatencySent == 0 || res.P99ms <= 0) ||
		o.Embedded && (res.EmbeddedRate <= 0 || res.EmbeddedBareRate <= 0) || o.AgentCommand != nil && (res.AgentRSSMB <= 0 || res.AgentIdleRSSMB <= 0) {
		t.Fatalf("missing figures: %+v", res)
	}
}

var onlyBacklog = flag.Bool("ingestbench.backlog", false, "measure only the backlog drain")

var onlyLatency = flag.Bool("ingestbench.latency", false, "measure only the publish-to-commit latency")

var drainProfile = flag.String("ingestbench.cpuprofile", "", "write a CPU profile of the first durable drain to this file")

var withEmbedded = flag.Bool("ingestbench.embedded", false, "also measure the embedded broker with and without an attached ingestor")

// TestHelperAgentProcess is the agent process of the footprint runs of
// TestRunSmall and TestAgentRSS, until its stdin closes.
func TestHelperAgentProcess(t *testing.T) {
	dir, broker := os.Getenv("INGESTBENCH_AGENT_DIR"), os.Getenv("INGESTBENCH_AGENT_BROKER")
	if dir == "" {
		t.Skip("helper process of the footprint run")
	}
	if err := RunAgentProcess(context.Background(), broker, dir, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// helperAgent starts this test binary as the footprint run's agent.
func helperAgent(broker, dir string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$")
	cmd.Env = append(os.Environ(), "INGESTBENCH_AGENT_DIR="+dir, "INGESTBENCH_AGENT_BROKER="+broker)
	return cmd
}

// TestAgentRSS measures the resident memory of a separate agent process
// (this test binary running only an ingestor) while it ingests 5,000
// messages/s for 10 s published from this process (-ingestbench).
func TestAgentRSS(t *testing.T) {
	if !*full {
		t.Skip("measurement: run with -ingestbench")
	}
	m := startBroker(t)
	o := Options{Broker: m.URL(), Dir: t.TempDir(), AgentCommand: helperAgent}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := footprint(context.Background(), o, &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent process at %d/s for %s: VmRSS idle %.1f MB, peak sampled %.1f MB, VmHWM %.1f MB",
		o.Rate, o.Duration, res.AgentIdleRSSMB, res.AgentRSSMB, res.AgentHWMMB)
}
