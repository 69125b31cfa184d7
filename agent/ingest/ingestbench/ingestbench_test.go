package ingestbench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest/mqtttest"
)

var (
	full     = flag.Bool("ingestbench", false, "run the full ingestion measurement (200,000-message backlog, 10 s at 5,000 msg/s) against a local Mosquitto")
	messages = flag.Int("ingestbench.messages", 0, "backlog size (default 200000 with -ingestbench)")
	rounds   = flag.Int("ingestbench.rounds", 0, "interleaved rounds (default 3)")
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
	o := Options{Broker: m.URL(), Messages: 2000, Rounds: 1, Rate: 500, Duration: 2 * time.Second, Dir: t.TempDir()}
	if *full {
		o = Options{Broker: m.URL(), Messages: *messages, Rounds: *rounds, Dir: t.TempDir(), SkipLatency: *onlyBacklog, SkipBacklog: *onlyLatency,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	}
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(res, "", "  ")
	t.Logf("%s", out)
	if res.DurableRate <= 0 || res.BareRate <= 0 || res.LatencySent == 0 || res.P99ms <= 0 {
		t.Fatalf("missing figures: %+v", res)
	}
}

var onlyBacklog = flag.Bool("ingestbench.backlog", false, "measure only the backlog drain")

var onlyLatency = flag.Bool("ingestbench.latency", false, "measure only the publish-to-commit latency")
