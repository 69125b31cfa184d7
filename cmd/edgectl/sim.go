package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
	"github.com/edgefleet/edgefleet/sim"
)

func newSimCmd() *cobra.Command {
	var (
		o       sim.Options
		asJSON  bool
		verbose bool
		serve   bool
		relay   bool
		fl      simFLFlags
	)
	c := &cobra.Command{
		Use:   "sim",
		Short: "Run a whole simulated fleet on this machine and report how it converged",
		Long: `sim runs N agents in one process, each with its own data directory, SQLite
store, memberlist ports and MQTT broker on 127.0.0.1, through the same code
paths as a real agent, and an in-process control plane they enroll into. Each
agent's simulated devices replay the occupancy data set (--datasets) over MQTT,
each agent from a different point in the data; without the data set they are
synthetic rooms (ids agent-NNN-synthetic-room-K) with readings that look like
an office's. The agents commit the readings and upload them to the control
plane.

The measured run writes on every agent, splits the fleet in two for
--partition, writes on both sides, heals, kills and restarts one agent,
optionally cuts the fleet off from the control plane for --outage (simulated
time, compressed by --time-scale), and reports convergence, enrollment,
telemetry delivered exactly once, and idle gossip traffic (idle_gossip breaks
it down by kind: measured once the devices stopped and every write they
caused has been made and gossiped).

With --serve the fleet keeps running until interrupted: edgectl prints the
control plane's URL and writes and selects the context "sim", so
'edgectl agents list' and 'edgectl devices list' work from another shell.
` + simFLHelp,
		Example: `  edgectl sim --serve
  edgectl sim
  edgectl sim --agents 50 --partition 30s --json
  edgectl sim --outage 1h --time-scale 60 --json
  edgectl sim --agents 50 --rotate 10s --json
  edgectl sim --fl wisdm --agents 36 --rounds 50 --strategy fedavg --json
  edgectl sim --fl wisdm --byzantine 4:scale=-10 --strategy fedtrimmedavg:beta=0.2 --json
  edgectl sim --fl occupancy --kill-during-round --restart-controlplane-during-round`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.Agents < 2 {
				return cli.Usagef("--agents must be at least 2")
			}
			o.NoRelay = !relay
			if o.TimeScale < 0 || o.Speedup < 0 || o.Outage < 0 || o.Rotate < 0 || o.RotateFor < 0 {
				return cli.Usagef("--time-scale, --speedup, --outage, --rotate and --rotate-for must not be negative")
			}
			if serve && o.Rotate > 0 {
				return cli.Usagef("--rotate is a step of the measured run; it cannot be combined with --serve")
			}
			if serve && o.Revoke {
				return cli.Usagef("--revoke is a step of the measured run; it cannot be combined with --serve")
			}
			if o.Revoke && o.NoControlPlane {
				return cli.Usagef("--revoke needs the control plane; drop --no-control-plane")
			}
			if serve && o.Outage > 0 {
				return cli.Usagef("--outage is a step of the measured run; it cannot be combined with --serve")
			}
			if o.DataSets == "" {
				o.DataSets = dataSetsDir()
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !asJSON || verbose {
				o.Logger = newStderrLogger()
			}
			if verbose {
				o.AgentLogger = newStderrLogger()
			}
			if fl.dataset != "" {
				if serve {
					return cli.Usagef("--fl runs a job and reports it; it cannot be combined with --serve")
				}
				return fl.run(ctx, c, o, asJSON)
			}
			if serve {
				return sim.Serve(ctx, o, func(info sim.ServeInfo) error {
					return announceServe(c.OutOrStdout(), invokedAs(os.Args[0]), info)
				})
			}
			rep, err := sim.Run(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(c.OutOrStdout(), rep)
			}
			return printSimReport(c.OutOrStdout(), rep)
		},
	}
	f := c.Flags()
	f.IntVar(&o.Agents, "agents", 10, "number of agents")
	f.DurationVar(&o.Partition, "partition", 10*time.Second, "how long the fleet stays split in two")
	f.BoolVar(&o.NoPartition, "no-partition", false, "skip the partition phase")
	f.IntVar(&o.WritesPerAgent, "writes", 20, "writes per agent in each write phase")
	f.DurationVar(&o.Idle, "idle", 10*time.Second, "window over which idle gossip traffic is measured")
	f.StringVar(&o.Profile, "profile", "lan", "memberlist profile of the agents: lan or test")
	f.StringVar(&o.DataDir, "data", "", "directory for the agents' data (default: a temporary directory, removed afterwards)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the simulated workload")
	f.DurationVar(&o.Timeout, "timeout", 60*time.Second, "bound on each waiting phase")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&verbose, "verbose", false, "also print the agents' own logs")
	f.BoolVar(&serve, "serve", false, "keep the fleet and its control plane running until interrupted, and select the edgectl context \"sim\"")
	f.BoolVar(&o.NoControlPlane, "no-control-plane", false, "run the agents without the in-process control plane")
	f.DurationVar(&o.Heartbeat, "heartbeat", 10*time.Second, "heartbeat interval the control plane asks for (simulated time)")
	f.IntVar(&o.DevicesPerAgent, "devices", 3, "simulated devices per agent sending over MQTT (the occupancy data set, else synthetic rooms)")
	f.BoolVar(&o.NoDevices, "no-devices", false, "run without simulated devices")
	f.Float64Var(&o.Speedup, "speedup", 60, "how much faster than recorded the devices replay the data set")
	f.StringVar(&o.DataSets, "datasets", "", "shared data directory holding occupancy/ (default $EDGEFLEET_DATA, else ../shared/data)")
	f.DurationVar(&o.Outage, "outage", 0, "cut the fleet off from the control plane for this long (simulated time) and measure how it resumes")
	f.DurationVar(&o.Rotate, "rotate", 0, "rotate the telemetry data key and the gossip keyring this often while the fleet writes and ingests (0: no rotation phase)")
	f.BoolVar(&o.Revoke, "revoke", false, "at the end, decommission one agent and report how long until every other agent refuses its gossip, whether an op it injects afterwards reaches anyone, and when the old gossip key has left every keyring (the gossip key's install grace is --rotate-grace)")
	f.DurationVar(&o.RotateFor, "rotate-for", 60*time.Second, "length of the rotation phase")
	f.DurationVar(&o.RotateGrace, "rotate-grace", 20*time.Second, "rotation phase: a new gossip key version becomes primary this long after its creation, and older ones leave this long after that; revocation phase: the install grace")
	f.IntVar(&o.PropagationWrites, "propagation-writes", 20, "single writes, on rotating agents, timed until every agent holds each (propagation_seconds)")
	f.BoolVar(&relay, "relay", true, "agents relay gossiped deltas (gossip.relay); --relay=false measures the baseline of the origin's broadcasts and anti-entropy")
	fl.register(c)
	f.Float64Var(&o.TimeScale, "time-scale", 0, "how much faster than real time the uplink and control plane clocks run (default 60 with --outage, else 1)")
	return c
}

// dataSetsDir is where the shared data sets are: $EDGEFLEET_DATA, else
// ../shared/data.
func dataSetsDir() string {
	if d := os.Getenv("EDGEFLEET_DATA"); d != "" {
		return d
	}
	return filepath.Join("..", "shared", "data")
}

// announceServe tells the user how to reach a served fleet and stores the
// edgectl context "sim"; the commands it suggests start with self, edgectl
// as the user invoked it.
func announceServe(w io.Writer, self string, info sim.ServeInfo) error {
	ctxErr := clientconfig.WriteAndSelect("", clientconfig.Context{
		Name:   "sim",
		Server: info.ControlPlaneURL,
		Token:  info.AdminToken,
		CA:     string(info.CAPEM),
		Agent:  info.AgentAPIs[0],
	})
	devices := fmt.Sprintf("%d devices replaying the occupancy data set (%s)", info.Devices, info.DataSets)
	switch {
	case info.Devices == 0:
		devices = "no devices"
	case info.Synthetic:
		devices = fmt.Sprintf("%d synthetic devices (no occupancy data at %s)", info.Devices, info.DataSets)
	}
	fmt.Fprintf(w, "fleet running: %d agents online, %s\n", info.Agents, devices)
	fmt.Fprintf(w, "control plane: %s\n", info.ControlPlaneURL)
	fmt.Fprintf(w, "agent API:     %s (agent-000)\n", info.AgentAPIs[0])
	fmt.Fprintf(w, "data:          %s\n", info.DataDir)
	if ctxErr != nil {
		fmt.Fprintf(w, "could not write the edgectl context \"sim\": %v\n", ctxErr)
		fmt.Fprintf(w, "use: --server %s --token %s --ca %s\n", info.ControlPlaneURL, info.AdminToken, info.CAPath)
	} else {
		fmt.Fprintln(w, "edgectl context \"sim\" written and selected; from another shell try:")
		fmt.Fprintf(w, "  %s agents list\n", self)
		fmt.Fprintf(w, "  %s devices list\n", self)
		fmt.Fprintf(w, "  %s telemetry query --bucket 1m\n", self)
	}
	fmt.Fprintln(w, "Ctrl-C stops the fleet.")
	return nil
}

// invokedAs is how the user runs edgectl, given os.Args[0]: a name found
// on $PATH as is ("edgectl"), a path as typed ("bin/edgectl" after make
// sim), an absolute path relative to the working directory when under it,
// and "go run ./cmd/edgectl" for go run's temporary binary.
func invokedAs(arg0 string) string {
	if arg0 == "" {
		return "edgectl"
	}
	if strings.Contains(filepath.ToSlash(arg0), "/go-build") {
		return "go run ./cmd/edgectl"
	}
	if !filepath.IsAbs(arg0) {
		return arg0
	}
	if p, err := exec.LookPath(filepath.Base(arg0)); err == nil && p == arg0 {
		return filepath.Base(arg0)
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, arg0); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return arg0
}

func newStderrLogger() *slog.Logger {
	l, _ := cli.NewLogger(os.Stderr, "info", "text")
	return l
}

func printSimReport(w io.Writer, r sim.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	verdict := "yes"
	if !r.Converged {
		verdict = "NO"
	}
	rows := [][2]string{
		{"agents", fmt.Sprint(r.Agents)},
		{"converged", verdict},
		{"distinct state hashes", fmt.Sprint(r.DistinctStateHashes)},
		{"writes", fmt.Sprint(r.Writes)},
		{"partition", fmt.Sprintf("%.1f s", r.PartitionSeconds)},
		{"convergence after heal", fmt.Sprintf("p50 %.2f s, p99 %.2f s, max %.2f s", r.ConvergenceSeconds.P50, r.ConvergenceSeconds.P99, r.ConvergenceSeconds.Max)},
		{"fresh-write propagation", fmt.Sprintf("p50 %.2f s, p95 %.2f s, p99 %.2f s, max %.2f s over %d writes%s", r.PropagationSeconds.P50, r.PropagationSeconds.P95, r.PropagationSeconds.P99, r.PropagationSeconds.Max, r.PropagationWrites, relayNote(r.Relay))},
		{"membership rejoin", fmt.Sprintf("p50 %.2f s, p99 %.2f s", r.RejoinSeconds.P50, r.RejoinSeconds.P99)},
		{"restarted agent", fmt.Sprintf("%s caught up in %.2f s; every agent saw it alive after %.2f s", r.RestartedAgent, r.RestartCatchUpSeconds, r.RestartRejoinSeconds)},
		{"idle gossip", fmt.Sprintf("%.0f B/s per agent", r.GossipBytesPerAgentPerSecond)},
		{"fleet formed in", fmt.Sprintf("%.1f s", r.FormationSeconds)},
		{"total", fmt.Sprintf("%.1f s", r.TotalSeconds)},
	}
	if cp := r.ControlPlane; cp != nil {
		rows = append(rows,
			[2]string{"control plane", fmt.Sprintf("%d enrolled, %d online at the end", cp.Enrolled, cp.Online)},
			[2]string{"enrolled and online after", fmt.Sprintf("p50 %.2f s, p99 %.2f s", cp.EnrollSeconds.P50, cp.EnrollSeconds.P99)})
	}
	if d := r.Devices; d != nil {
		kind := "occupancy replay"
		if d.Synthetic {
			kind = "synthetic, no occupancy data"
		}
		rows = append(rows,
			[2]string{"devices", fmt.Sprintf("%d (%s) sent %d messages; agents stored %d readings, %d dead letters", d.Devices, kind, d.Messages, d.StoredAtAgents, d.DeadLetters)},
			[2]string{"at the control plane", fmt.Sprintf("%d readings, %d duplicates, %d missing (drained in %.1f s)", d.AtControlPlane, d.Duplicates, d.Missing, d.DrainSeconds)})
	}
	if o := r.Outage; o != nil {
		rows = append(rows,
			[2]string{"control plane outage", fmt.Sprintf("%.0f s simulated (%.1f s real, ×%g); %d agents offline in the registry; %d readings stored meanwhile", o.SimSeconds, o.RealSeconds, o.TimeScale, o.OfflineAtEnd, o.ReadingsDuringOutage)},
			[2]string{"resumed after outage", fmt.Sprintf("heartbeats p50 %.0f s, p99 %.0f s; uploads caught up in %.0f s (simulated)", o.ResumeSeconds.P50, o.ResumeSeconds.P99, o.UploadCatchUpSeconds)})
	}
	if k := r.Rotation; k != nil {
		rows = append(rows,
			[2]string{"key rotation under load", fmt.Sprintf("%d rotations of each key every %.0f s over %.0f s; telemetry key v%d, gossip key v%d (primary on %d agents)", k.Rotations, k.Interval, k.Seconds, k.TelemetryVersion, k.GossipVersion, k.AgentsOnGossipPrimary)},
			[2]string{"gossip key graces", fmt.Sprintf("install %.0f s, remove %.0f s", k.InstallGrace, k.RemoveGrace)},
			[2]string{"during rotation", fmt.Sprintf("%d of %d membership samples split, %d with a suspect (min alive %d); %.0f gossip decrypt failures; %.0f uploads refused; %d writes", k.SplitSamples, k.Samples, k.SuspectSamples, k.MinAlive, k.GossipDecryptFailures, k.UploadsRefused, k.Writes)},
			[2]string{"same load, no rotation", fmt.Sprintf("%d of %d membership samples split, %d with a suspect (min alive %d) over %.0f s before the first rotation", k.BaselineSplitSamples, k.BaselineSamples, k.BaselineSuspects, k.BaselineMinAlive, k.BaselineSeconds)})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// relayNote marks a run whose agents did not relay gossiped deltas.
func relayNote(relay bool) string {
	if relay {
		return ""
	}
	return " (relay off)"
}
