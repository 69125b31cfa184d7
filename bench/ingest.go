package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/bench/ingestbench"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// IngestOptions configure RunIngest. Zero values take the defaults.
type IngestOptions struct {
	// Broker is the MQTT broker to measure against (tcp://host:port).
	// For the figures to mean what they say, it is a local Mosquitto whose
	// in-flight window (max_inflight_messages) is 0 or at least twice the
	// ingestor's group-commit batch (1000) and whose queue
	// (max_queued_messages) holds the backlog: see package agent/ingest.
	// Empty: RunIngest starts such a Mosquitto itself (package
	// internal/mqtttest), which needs the mosquitto binary.
	Broker string
	// Messages is the backlog drained per round; 0 = 200000.
	Messages int
	// Rounds of backlog drains, subscribers interleaved (the order
	// rotates each round); medians are reported. 0 = 3.
	Rounds int
	// Rate is the publish rate of the latency run, messages/s; 0 = 5000.
	Rate int
	// Duration of the latency run; 0 = 10s, else at least 1s.
	Duration time.Duration
	// Devices the stream is spread over; 0 = 10.
	Devices int
	// Dir is the scratch directory for the databases (and the broker
	// started here); "" = a new temporary directory, removed afterwards.
	Dir string
	// SkipBacklog and SkipLatency leave a part out.
	SkipBacklog, SkipLatency bool
	// NoMosquittoSub leaves out the mosquitto_sub reference drain.
	NoMosquittoSub bool
	// Embedded adds the embedded broker run: EmbeddedPublishers devices
	// (0 = 4) publish Messages between them to the in-process broker
	// with an ingestor attached (PUBACK after the commit), beside the
	// same broker with none (PUBACK at once, nothing stored).
	Embedded           bool
	EmbeddedPublishers int
	// EmbeddedTLS adds to the embedded run the durable drain with the
	// devices over TLS, logged in with their secrets, under ACLs and the
	// broker's limits, beside the same drain in clear text without them.
	EmbeddedTLS bool
	// AgentCommand, when set, adds the footprint run (with the latency
	// run): the command of a separate agent process that runs
	// ingestbench.RunAgentProcess against the broker with the data
	// directory given; its resident memory is sampled while it ingests
	// Rate messages/s for Duration.
	AgentCommand func(broker, dir string) *exec.Cmd
	// Malformed payloads mixed into each backlog (random bytes, broken
	// JSON, wrong types, NaN, overflowing numbers, huge arrays, far-future
	// times);
	// every subscriber gets the same stream, and the durable drain must
	// dead-letter exactly these. 0 = none.
	Malformed int
	// BatchMessages and BatchDelay adjust the ingestor's group commit;
	// 0 = its defaults (1000 messages, 5ms).
	BatchMessages int
	BatchDelay    time.Duration
	// Logger receives progress (each drain, the broker started). Nil
	// discards it.
	Logger *slog.Logger
}

func (o IngestOptions) validate() error {
	if o.Messages < 0 || o.Rounds < 0 || o.Rate < 0 || o.Devices < 0 || o.Malformed < 0 || o.BatchMessages < 0 || o.BatchDelay < 0 || o.EmbeddedPublishers < 0 {
		return fmt.Errorf("bench: ingest: negative option in messages %d, rounds %d, rate %d, devices %d, malformed %d, batch %d, batch delay %s, embedded publishers %d",
			o.Messages, o.Rounds, o.Rate, o.Devices, o.Malformed, o.BatchMessages, o.BatchDelay, o.EmbeddedPublishers)
	}
	if o.Duration != 0 && o.Duration < time.Second {
		return fmt.Errorf("bench: ingest: latency run duration %s is below 1s", o.Duration)
	}
	if o.SkipBacklog && o.SkipLatency && !o.Embedded && !o.EmbeddedTLS {
		return errors.New("bench: ingest: both parts skipped; nothing to measure")
	}
	return nil
}

// RunIngest measures MQTT ingestion (package agent/ingest) against a
// broker, in one run:
//
//   - ingest_backlog_drain (msg/s): durable ingestion (decode, group
//     commit to SQLite with synchronous=FULL, PUBACK after the commit)
//     draining a backlog of QoS 1 messages queued for its persistent
//     session, beside a bare paho subscriber (same library, broker and
//     stream) that acknowledges at once and stores nothing. Ratio is
//     ours / bare.
//   - ingest_backlog_drain_vs_mosquitto_sub: the same durable figure
//     beside mosquitto_sub -q 1 (when installed), and
//     paho_bare_drain_vs_mosquitto_sub, the library's own ceiling.
//   - ingest_publish_to_commit_p50/p90/p99/max (ms): from the publish
//     call to the end of the group commit holding the reading, at Rate
//     messages/s for Duration (the first second is warm-up).
//   - ingest_rss_mb: peak resident memory of the process during the
//     latency run (it includes the publisher's client), with the heap
//     in use beside it.
//   - ingest_agent_rss_mb (with AgentCommand): peak resident memory of
//     a separate agent process ingesting Rate messages/s for Duration
//     (only the agent: the publisher is in this process), and its
//     resident memory idle after start.
//   - ingest_embedded_publish (msg/s, with Embedded): devices publishing
//     to the embedded broker with an ingestor attached, until the last
//     PUBACK (each sent after its commit), beside the same broker with
//     no ingestor (PUBACK at once, nothing stored).
//   - ingest_embedded_publish_tls (msg/s, with EmbeddedTLS): the same
//     durable run with the devices over TLS and the broker's limits on,
//     beside the durable run in clear text; ratio TLS / clear text.
//
// Each message is flat JSON with three metrics and its publish time.
func RunIngest(ctx context.Context, opt IngestOptions) (Report, error) {
	if err := opt.validate(); err != nil {
		return Report{}, err
	}
	logger := opt.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "edgefleet-bench-ingest-")
		if err != nil {
			return Report{}, fmt.Errorf("bench: ingest: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return Report{}, fmt.Errorf("bench: ingest: %w", err)
	}
	broker, brokerDesc := opt.Broker, opt.Broker
	if broker == "" && !(opt.SkipBacklog && opt.SkipLatency) {
		m, desc, err := startMosquitto(filepath.Join(dir, "mosquitto"))
		if err != nil {
			return Report{}, err
		}
		defer m.Stop()
		broker, brokerDesc = m.URL(), desc
		logger.Info("broker started", "url", broker, "broker", desc)
	}
	res, err := ingestbench.Run(ctx, ingestbench.Options{
		Broker: broker, Dir: filepath.Join(dir, "ingest"), Messages: opt.Messages, Rounds: opt.Rounds, Devices: opt.Devices,
		Rate: opt.Rate, Duration: opt.Duration, SkipBacklog: opt.SkipBacklog, SkipLatency: opt.SkipLatency,
		NoMosquittoSub: opt.NoMosquittoSub, Malformed: opt.Malformed,
		Embedded: opt.Embedded || opt.EmbeddedTLS, EmbeddedPublishers: opt.EmbeddedPublishers, EmbeddedTLS: opt.EmbeddedTLS,
		AgentCommand:  opt.AgentCommand,
		BatchMessages: opt.BatchMessages, BatchDelay: opt.BatchDelay, Logger: logger,
	})
	if err != nil {
		return Report{}, fmt.Errorf("bench: ingest: %w", err)
	}
	rep := Report{Suite: "ingest", Machine: Machine(fmt.Sprintf("backlog=%d malformed=%d rounds=%d latency_rate=%d/s latency_duration=%s devices=%d payload=flat-json-3-metrics",
		res.Messages, res.Malformed, res.Rounds, res.LatencyRate, defaultDuration(opt.Duration), defaultInt(opt.Devices, 10)))}
	if opt.Embedded || opt.EmbeddedTLS {
		rep.Machine["workload"] += fmt.Sprintf(" embedded_publishers=%d", res.EmbeddedPublishers)
	}
	if brokerDesc == "" {
		brokerDesc = "none (embedded broker run only)"
	}
	rep.Machine["broker"] = brokerDesc
	ratio := func(a, b float64) float64 {
		if b > 0 {
			return a / b
		}
		return 0
	}
	if !opt.SkipBacklog {
		rep.Results = append(rep.Results,
			Result{Name: "ingest_backlog_drain", Unit: "msg/s", Value: res.DurableRate,
				Baseline: &Baseline{Name: "paho_bare_drain (acks at once, stores nothing)", Value: res.BareRate},
				Ratio:    ratio(res.DurableRate, res.BareRate)},
			Result{Name: "ingest_backlog_drain_vs_buffered_bare", Unit: "msg/s", Value: res.DurableRate,
				Baseline: &Baseline{Name: "paho_bare_drain on the subscriber's buffered connection", Value: res.BufferedBareRate},
				Ratio:    ratio(res.DurableRate, res.BufferedBareRate)},
			Result{Name: "ingest_commit_batch", Unit: "messages", Value: res.MeanCommitMessages},
		)
		if res.MosquittoSubRate > 0 {
			rep.Results = append(rep.Results,
				Result{Name: "ingest_backlog_drain_vs_mosquitto_sub", Unit: "msg/s", Value: res.DurableRate,
					Baseline: &Baseline{Name: "mosquitto_sub -q 1", Value: res.MosquittoSubRate},
					Ratio:    ratio(res.DurableRate, res.MosquittoSubRate)},
				Result{Name: "paho_bare_drain_vs_mosquitto_sub", Unit: "msg/s", Value: res.BareRate,
					Baseline: &Baseline{Name: "mosquitto_sub -q 1", Value: res.MosquittoSubRate},
					Ratio:    ratio(res.BareRate, res.MosquittoSubRate)},
			)
		}
	}
	if !opt.SkipLatency {
		rep.Results = append(rep.Results,
			Result{Name: "ingest_publish_rate", Unit: "msg/s", Value: res.LatencyAchieved},
			Result{Name: "ingest_publish_to_commit_p50", Unit: "ms", Value: res.P50ms},
			Result{Name: "ingest_publish_to_commit_p90", Unit: "ms", Value: res.P90ms},
			Result{Name: "ingest_publish_to_commit_p99", Unit: "ms", Value: res.P99ms},
			Result{Name: "ingest_publish_to_commit_max", Unit: "ms", Value: res.Maxms},
			Result{Name: "ingest_rss_mb", Unit: "MB", Value: res.RSSMB},
			Result{Name: "ingest_heap_mb", Unit: "MB", Value: res.HeapMB},
		)
		if opt.AgentCommand != nil {
			rep.Results = append(rep.Results,
				Result{Name: "ingest_agent_rss_mb", Unit: "MB", Value: res.AgentRSSMB},
				Result{Name: "ingest_agent_idle_rss_mb", Unit: "MB", Value: res.AgentIdleRSSMB},
			)
		}
	}
	if opt.Embedded || opt.EmbeddedTLS {
		rep.Results = append(rep.Results,
			Result{Name: "ingest_embedded_publish", Unit: "msg/s", Value: res.EmbeddedRate,
				Baseline: &Baseline{Name: fmt.Sprintf("embedded broker without ingestor (acks at once, stores nothing), %d publishers", res.EmbeddedPublishers),
					Value: res.EmbeddedBareRate},
				Ratio: ratio(res.EmbeddedRate, res.EmbeddedBareRate)},
			Result{Name: "ingest_embedded_commit_batch", Unit: "messages", Value: res.EmbeddedCommitBatch},
		)
	}
	if opt.EmbeddedTLS {
		rep.Results = append(rep.Results,
			Result{Name: "ingest_embedded_publish_tls", Unit: "msg/s", Value: res.EmbeddedTLSRate,
				Baseline: &Baseline{Name: "the same durable drain in clear text, no broker limits", Value: res.EmbeddedRate},
				Ratio:    ratio(res.EmbeddedTLSRate, res.EmbeddedRate)})
	}
	return rep, nil
}

// startMosquitto starts a local Mosquitto in dir configured for the
// measurement: no in-flight window and no queue bound, so the backlog is
// kept whole and group commits can fill. It describes the broker for the
// report.
func startMosquitto(dir string) (*mqtttest.Mosquitto, string, error) {
	bin, err := mqtttest.Binary()
	if err != nil {
		return nil, "", fmt.Errorf("bench: ingest: no broker given and none to start: %w; or pass the URL of a broker (tcp://host:port)", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("bench: ingest: %w", err)
	}
	m, err := mqtttest.Start(mqtttest.Options{Dir: dir})
	if err != nil {
		return nil, "", fmt.Errorf("bench: ingest: start mosquitto: %w", err)
	}
	desc := "mosquitto"
	// "mosquitto -h" prints its version on the first line (and exits 3).
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	if first, _, _ := strings.Cut(string(out), "\n"); strings.HasPrefix(first, "mosquitto version ") {
		desc = strings.TrimSpace(first)
	}
	return m, desc + " (local, started by the bench; max_inflight_messages 0, max_queued_messages 0)", nil
}

func defaultInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func defaultDuration(d time.Duration) time.Duration {
	if d == 0 {
		return 10 * time.Second
	}
	return d
}
