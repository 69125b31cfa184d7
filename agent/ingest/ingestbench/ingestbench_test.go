package ingestbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/ingest/mqtttest"
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
	o := Options{Broker: m.URL(), Messages: 2000, Malformed: 100, Rounds: 1, Rate: 500, Duration: 2 * time.Second, Dir: t.TempDir(), Embedded: true}
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
		o.Embedded && (res.EmbeddedRate <= 0 || res.EmbeddedBareRate <= 0) {
		t.Fatalf("missing figures: %+v", res)
	}
}

var onlyBacklog = flag.Bool("ingestbench.backlog", false, "measure only the backlog drain")

var onlyLatency = flag.Bool("ingestbench.latency", false, "measure only the publish-to-commit latency")

var drainProfile = flag.String("ingestbench.cpuprofile", "", "write a CPU profile of the first durable drain to this file")

var withEmbedded = flag.Bool("ingestbench.embedded", false, "also measure the embedded broker with and without an attached ingestor")

// TestHelperAgentProcess is the agent process of TestAgentRSS: an
// ingestor with the default configuration, until its stdin closes.
func TestHelperAgentProcess(t *testing.T) {
	dir, broker := os.Getenv("INGESTBENCH_AGENT_DIR"), os.Getenv("INGESTBENCH_AGENT_BROKER")
	if dir == "" {
		t.Skip("helper process of TestAgentRSS")
	}
	in, err := ingest.New(ingest.Config{DataDir: dir, MQTT: ingest.MQTTConfig{Broker: broker, ClientID: "rss-agent"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.WaitSubscribed(ctx); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	in.Stop()
}

// procStatus returns a field of /proc/PID/status in bytes.
func procStatus(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// TestAgentRSS measures the resident memory of a separate agent process
// (this test binary running only an ingestor) while it ingests 5,000
// messages/s for 10 s published from this process (-ingestbench).
func TestAgentRSS(t *testing.T) {
	if !*full {
		t.Skip("measurement: run with -ingestbench")
	}
	m := startBroker(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "INGESTBENCH_AGENT_DIR="+dir, "INGESTBENCH_AGENT_BROKER="+m.URL())
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "ready" {
	}
	go io.Copy(io.Discard, out)
	pid := cmd.Process.Pid
	idle := procStatus(pid, "VmRSS")
	pub, err := NewPublisher(m.URL(), "rss-pub", 10)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const rate, dur = 5000, 10 * time.Second
	var peak float64
	start := time.Now()
	sent := 0
	next := time.Now()
	for time.Since(start) < dur {
		for due := int(time.Since(start).Seconds() * rate); sent < due; sent++ {
			if err := pub.Publish(time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if time.Now().After(next) {
			peak = max(peak, procStatus(pid, "VmRSS"))
			next = time.Now().Add(100 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	hwm := procStatus(pid, "VmHWM")
	var rep ingest.InspectReport
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		rep, err = ingest.Inspect(dir)
		if err == nil && rep.Stats.Messages >= int64(sent) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("agent process: %d messages at %d/s: VmRSS idle %.1f MB, peak sampled %.1f MB, VmHWM %.1f MB; committed %d",
		sent, rate, idle/(1<<20), peak/(1<<20), hwm/(1<<20), rep.Stats.Messages)
	if rep.Stats.Messages < int64(sent) {
		t.Fatalf("committed %d of %d", rep.Stats.Messages, sent)
	}
}
