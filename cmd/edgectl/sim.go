package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/sim"
)

func newSimCmd() *cobra.Command {
	var (
		o       sim.Options
		asJSON  bool
		verbose bool
	)
	c := &cobra.Command{
		Use:   "sim",
		Short: "Run a whole simulated fleet on this machine and report how it converged",
		Long: `sim runs N agents in one process, each with its own data directory, SQLite
store and memberlist ports on 127.0.0.1, through the same code paths as a real
agent. It writes on every agent, splits the fleet in two for --partition, writes
on both sides, heals, kills and restarts one agent, and reports how long each
agent took to hold the final state, and the idle gossip traffic.`,
		Example: `  edgectl sim
  edgectl sim --agents 50 --partition 30s --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.Agents < 2 {
				return cli.Usagef("--agents must be at least 2")
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !asJSON || verbose {
				o.Logger = newStderrLogger()
			}
			if verbose {
				o.AgentLogger = newStderrLogger()
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
	return c
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
		{"membership rejoin", fmt.Sprintf("p50 %.2f s, p99 %.2f s", r.RejoinSeconds.P50, r.RejoinSeconds.P99)},
		{"restarted agent", fmt.Sprintf("%s caught up in %.2f s; every agent saw it alive after %.2f s", r.RestartedAgent, r.RestartCatchUpSeconds, r.RestartRejoinSeconds)},
		{"idle gossip", fmt.Sprintf("%.0f B/s per agent", r.GossipBytesPerAgentPerSecond)},
		{"fleet formed in", fmt.Sprintf("%.1f s", r.FormationSeconds)},
		{"total", fmt.Sprintf("%.1f s", r.TotalSeconds)},
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}
