package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/bench/ingestbench"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func newBenchCmd() *cobra.Command {
	var (
		asJSON bool
		dir    string
		rounds int
		crdtO  bench.CRDTOptions
		ingO   bench.IngestOptions
		mlO    bench.MLOptions
		cpuClk bool
		verb   bool
	)
	c := &cobra.Command{
		Use:   "bench SUITE",
		Short: "Measure a subsystem beside its baseline in the same run (suites: crdt, crypto, ingest, ml)",
		Long: `bench runs a benchmark suite. Each figure is measured beside a baseline doing
the same work in the same run, interleaved over several rounds; the report
gives medians and ratio = ours / baseline (higher is better).

Suites:
  crdt     CRDT store local writes and remote-delta merges beside plain SQLite inserts
  crypto   envelope seal/open beside raw AES-256-GCM; HPKE, X-Wing and ML-DSA beside circl called bare
  ml       fedlearn's gorgonia training step (MLP 43-64-6 at batch 256 and 64, LR 5-2 at batch 64,
           SGD and Adam), batched inference (light forward pass, and a gorgonia graph) and
           single-reading inference with p50/p99 latency, each beside a hand-written gonum
           forward, backward and update of the same model. --cpu-clock measures process CPU
           time instead of wall time (steadier on a shared machine).
  ingest   MQTT ingestion: durable drain of a QoS 1 backlog (decode, group commit to SQLite,
           PUBACK after the commit) beside a bare paho subscriber that stores nothing and
           beside mosquitto_sub -q 1; publish-to-commit latency at --rate; peak RSS.
           Against --broker, else a Mosquitto it starts (needs the mosquitto binary).
           The footprint run samples the resident memory of a separate agent process
           (this binary, ingesting alone) at --rate for --duration.
           --embedded adds devices publishing to the in-process broker, PUBACK after the
           commit, beside the same broker acknowledging at once.`,
		Example: `  edge-agent bench crdt --json
  edge-agent bench ingest --json
  edge-agent bench ml --json --cpu-clock
  edge-agent bench ingest --broker tcp://127.0.0.1:1883 --messages 50000 --rate 2000 --duration 5s`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if args[0] == agentProcessSuite {
				// The footprint run's agent process (not a suite).
				if ingO.Broker == "" || dir == "" {
					return cli.Usagef("%s needs --broker and --dir", agentProcessSuite)
				}
				return ingestbench.RunAgentProcess(c.Context(), ingO.Broker, dir, c.InOrStdin(), c.OutOrStdout())
			}
			if args[0] == "ingest" {
				if err := checkIngestFlags(c, ingO, rounds); err != nil {
					return err
				}
			} else {
				if args[0] != "ml" && c.Flags().Changed("cpu-clock") {
					return cli.Usagef("--cpu-clock is an ml flag; the %s suite does not use it", args[0])
				}
				for _, name := range ingestFlags {
					if c.Flags().Changed(name) {
						return cli.Usagef("--%s is an ingest flag; the %s suite does not use it", name, args[0])
					}
				}
			}
			if dir == "" {
				d, err := os.MkdirTemp("", "edgefleet-bench-")
				if err != nil {
					return fmt.Errorf("bench: temp dir: %w", err)
				}
				defer os.RemoveAll(d)
				dir = d
			}
			var (
				rep bench.Report
				err error
			)
			switch args[0] {
			case "crdt":
				crdtO.Dir, crdtO.Rounds = dir, rounds
				rep, err = bench.RunCRDT(c.Context(), crdtO)
			case "crypto":
				rep, err = bench.RunCrypto(c.Context(), bench.CryptoOptions{Rounds: rounds})
			case "ingest":
				ingO.Dir, ingO.Rounds = dir, rounds
				if self, err := os.Executable(); err == nil && !ingO.SkipLatency {
					ingO.AgentCommand = func(broker, dir string) *exec.Cmd {
						return exec.Command(self, "bench", agentProcessSuite, "--broker", broker, "--dir", dir)
					}
				}
				if verb {
					ingO.Logger = slog.New(slog.NewTextHandler(c.ErrOrStderr(), nil))
				}
				rep, err = bench.RunIngest(c.Context(), ingO)
			case "ml":
				mlO.Rounds = rounds
				if cpuClk {
					mlO.Now, mlO.ClockName = bench.CPUClock, "process-cpu"
				}
				rep, err = bench.RunML(c.Context(), mlO)
			default:
				return cli.Usagef("unknown bench suite %q (suites: crdt, crypto, ingest, ml)", args[0])
			}
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(c.OutOrStdout(), rep)
			}
			return printBench(c.OutOrStdout(), rep)
		},
	}
	f := c.Flags()
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.StringVar(&dir, "dir", "", "directory for benchmark databases (default: a temporary directory)")
	f.IntVar(&rounds, "rounds", 0, "rounds, alternating ours and baseline; medians are reported (0: the suite's default)")
	f.IntVar(&crdtO.Ops, "ops", 2000, "crdt: operations per round")
	f.IntVar(&crdtO.BatchSize, "batch", 100, "crdt: ops per merge call and per baseline batch transaction")
	f.StringVar(&ingO.Broker, "broker", "", "ingest: MQTT broker tcp://host:port (default: start a local mosquitto)")
	f.IntVar(&ingO.Messages, "messages", 200000, "ingest: backlog of messages drained per subscriber and round")
	f.IntVar(&ingO.Rate, "rate", 5000, "ingest: publish rate of the latency run, messages/s")
	f.DurationVar(&ingO.Duration, "duration", 10*time.Second, "ingest: length of the latency run (at least 1s; the first second is warm-up)")
	f.IntVar(&ingO.Devices, "devices", 10, "ingest: device topics the stream is spread over")
	f.IntVar(&ingO.Malformed, "malformed", 0, "ingest: malformed payloads mixed into each backlog (must be dead-lettered)")
	f.IntVar(&ingO.BatchMessages, "commit-batch", 0, "ingest: most messages per group commit (0: the ingestor's default, 1000)")
	f.DurationVar(&ingO.BatchDelay, "commit-delay", 0, "ingest: how long a group commit waits for more messages (0: the default, 5ms)")
	f.BoolVar(&ingO.SkipBacklog, "skip-backlog", false, "ingest: leave out the backlog drains")
	f.BoolVar(&ingO.SkipLatency, "skip-latency", false, "ingest: leave out the latency run")
	f.BoolVar(&ingO.NoMosquittoSub, "no-mosquitto-sub", false, "ingest: leave out the mosquitto_sub -q 1 reference drain")
	f.BoolVar(&ingO.Embedded, "embedded", false, "ingest: also measure the embedded broker with an ingestor attached, beside it without one")
	f.IntVar(&ingO.EmbeddedPublishers, "embedded-publishers", 4, "ingest: publishing connections of the embedded broker run")
	f.BoolVar(&ingO.EmbeddedTLS, "embedded-tls", false, "ingest: also measure the embedded broker's durable drain with devices over TLS, with credentials, ACLs and the broker's limits on, beside it in clear text (implies --embedded)")
	f.BoolVar(&cpuClk, "cpu-clock", false, "ml: time with the process's CPU time (user+system) instead of wall time")
	f.BoolVarP(&verb, "verbose", "v", false, "print progress on stderr")
	return c
}

// agentProcessSuite runs the agent process of the ingest suite's
// footprint run: an ingestor alone, measured from outside.
const agentProcessSuite = "ingest-agent-process"

// ingestFlags are the flags only the ingest suite uses.
var ingestFlags = []string{"broker", "messages", "rate", "duration", "devices", "malformed",
	"commit-batch", "commit-delay", "skip-backlog", "skip-latency", "no-mosquitto-sub", "embedded", "embedded-publishers", "embedded-tls"}

// checkIngestFlags refuses out-of-range ingest options as usage errors.
func checkIngestFlags(c *cobra.Command, o bench.IngestOptions, rounds int) error {
	switch {
	case o.Messages < 1 || o.Rate < 1 || o.Devices < 1:
		return cli.Usagef("--messages, --rate and --devices must be positive")
	case rounds < 0 || o.Malformed < 0 || o.BatchMessages < 0 || o.BatchDelay < 0:
		return cli.Usagef("--rounds, --malformed, --commit-batch and --commit-delay must not be negative")
	case o.EmbeddedPublishers < 1 || o.EmbeddedPublishers > 1000:
		return cli.Usagef("--embedded-publishers %d: want 1..1000", o.EmbeddedPublishers)
	case o.Malformed > o.Messages:
		return cli.Usagef("--malformed %d exceeds --messages %d", o.Malformed, o.Messages)
	case o.Duration < time.Second:
		return cli.Usagef("--duration %s: the latency run lasts at least 1s", o.Duration)
	case o.SkipBacklog && o.SkipLatency && !o.Embedded && !o.EmbeddedTLS:
		return cli.Usagef("--skip-backlog and --skip-latency together leave nothing to measure (without --embedded)")
	}
	if o.Broker != "" {
		if !strings.HasPrefix(o.Broker, "tcp://") && !strings.HasPrefix(o.Broker, "mqtt://") && !strings.HasPrefix(o.Broker, "ssl://") {
			return cli.Usagef("--broker %q: want tcp://host:port", o.Broker)
		}
	}
	for _, name := range []string{"ops", "batch"} {
		if c.Flags().Changed(name) {
			return cli.Usagef("--%s is a crdt flag; the ingest suite does not use it", name)
		}
	}
	return nil
}

func printBench(w io.Writer, r bench.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "suite %s\n", r.Suite)
	keys := make([]string, 0, len(r.Machine))
	for k := range r.Machine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s: %s\n", k, r.Machine[k])
	}
	fmt.Fprintln(tw, "NAME\tVALUE\tUNIT\tBASELINE\tBASELINE VALUE\tRATIO")
	for _, res := range r.Results {
		if res.Baseline == nil {
			fmt.Fprintf(tw, "%s\t%.1f\t%s\t-\t-\t-\n", res.Name, res.Value, res.Unit)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%.1f\t%.3f\n", res.Name, res.Value, res.Unit, res.Baseline.Name, res.Baseline.Value, res.Ratio)
	}
	return tw.Flush()
}
