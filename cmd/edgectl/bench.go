package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/bench/cpbench"
	"github.com/edgefleet/edgefleet/bench/flbench"
	"github.com/edgefleet/edgefleet/bench/greenbench"
	"github.com/edgefleet/edgefleet/bench/secaggbench"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
	"github.com/edgefleet/edgefleet/internal/procstat"
)

// benchServer modes.
const (
	serverChild     = "child"
	serverInProcess = "in-process"
)

func (a *app) newBenchCmd() *cobra.Command {
	var (
		out           cli.OutputFlags
		load          cpbench.LoadOptions
		serverMode    string
		memLimit      string
		dir           string
		ingestBatches int
		batchSize     int
		flOpt         flbench.FLOptions
		flClock       string
		greenOpt      greenbench.GreenOptions
		greenClock    string
		secOpt        secaggbench.SecAggOptions
		secSizes      string
		secClock      string
	)
	c := &cobra.Command{
		Use:   "bench controlplane|fl|green|secagg",
		Short: "Measure the control plane (heartbeat latency under N agents, server RSS, telemetry ingest), FL aggregation, secure aggregation or carbon-aware job placement",
		Long: `bench controlplane enrolls --agents simulated agents, opens one mutual-TLS
connection per agent, sends heartbeats at agents/interval per second for
--duration and reports API latency percentiles (p50, p90, p99, max), the
achieved heartbeat rate against the target, server RSS and server CPU per
heartbeat. It then measures telemetry ingest through the control plane's
store in batches of --batch-size readings beside plain SQLite inserts of the
same rows (ratio = ours / plain).

The server is, in order of preference:
  --server URL (or EDGEFLEET_SERVER, or --context): an existing control plane;
      the token needs the operator role. Enrolled load agents stay in its
      registry (label loadtest=true); decommission them afterwards.
  --server-mode child (default): 'edgectl controlplane' in a child process
      on 127.0.0.1 with a fresh data directory, so the reported RSS is the
      server's alone.
  --server-mode in-process: the server in this process (RSS then includes
      the load generator).

The report has the same shape as 'edge-agent bench'.

bench fl measures federated-learning aggregation on this machine, no server:
--fl-clients float32 updates of --fl-params values each, aggregated by
FedAvg, FedMedian, FedTrimmedAvg (beta 0.2) and Krum (f = clients/10), each
beside a plain loop computing the same model in the same run (updates/s,
ratio = ours / plain; the two models are compared before timing). Time is
this process's CPU time by default (--fl-clock cpu), so that other load on
the machine does not count; everything runs on one goroutine.

bench green places --green-jobs jobs (15 min to 4 h, windows or deadlines,
20 % interruptible) one after another on a day of --green-slots quarter-hour
slots holding --green-capacity jobs each, with greensched's planner beside a
brute-force planner (every start summed afresh, every slot's capacity
checked) in the same run; the two placements are compared job by job before
timing. It reports the time to place all jobs (ms, medians of
--green-rounds) and jobs/s with the ratio ours / brute force. Time is CPU
time by default (--green-clock), one goroutine.

bench secagg runs whole SecAgg+ rounds (fedlearn/secagg, Flower's default
ranges) for each of --secagg-sizes (clients x values), --secagg-dropout of
the clients dropping after sending their shares, every message encoded and
decoded, beside the plain round (float32 updates encoded, decoded, summed).
Per size: client and server CPU per round (us; ratio = cost factor over
plain), bytes of the masked update and of keys and shares per client beside
the plain float32 update, bytes sent to each client, survivors, and the
relative error of the sum. Medians of --secagg-rounds; CPU time by default
(--secagg-clock), one goroutine.`,
		Example: `  edgectl bench controlplane --agents 1000 --json
  edgectl bench controlplane --agents 10000 --interval 10s --duration 20s --json
  edgectl bench fl --json
  edgectl bench green --json
  edgectl bench secagg --json`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"controlplane", "fl", "green", "secagg"},
		RunE: func(c *cobra.Command, args []string) error {
			if !slices.Contains([]string{"controlplane", "fl", "green", "secagg"}, args[0]) {
				return cli.Usagef("unknown bench suite %q (suites: controlplane, fl, green, secagg)", args[0])
			}
			format, err := out.Format()
			if err != nil {
				return err
			}
			if args[0] == "green" {
				if greenOpt.Jobs < 1 || greenOpt.Slots < 1 || greenOpt.Capacity < 0 || greenOpt.Rounds < 1 {
					return cli.Usagef("--green-jobs, --green-slots and --green-rounds must be positive, --green-capacity not negative")
				}
				now, err := benchClock(greenClock, "--green-clock")
				if err != nil {
					return err
				}
				greenOpt.Now = now
				rep, err := greenbench.RunGreen(c.Context(), greenOpt)
				if err != nil {
					return err
				}
				rep.Machine["clock"] = greenClock
				return cli.Print(c.OutOrStdout(), format, rep, func(w io.Writer) error { return printBenchReport(w, rep) })
			}
			if args[0] == "secagg" {
				if secOpt.Sizes, err = secaggbench.ParseSecAggSizes(secSizes); err != nil {
					return cli.Usagef("--secagg-sizes: %v", err)
				}
				if secOpt.Rounds < 1 || secOpt.NumShares <= 0 || secOpt.Threshold <= 0 || secOpt.Dropout < 0 || secOpt.Dropout >= 1 {
					return cli.Usagef("--secagg-rounds, --secagg-shares and --secagg-threshold must be positive, --secagg-dropout in [0, 1)")
				}
				if secOpt.Dropout == 0 {
					secOpt.Dropout = -1 // none (0 means the default in bench)
				}
				if secOpt.Now, err = benchClock(secClock, "--secagg-clock"); err != nil {
					return err
				}
				rep, err := secaggbench.RunSecAgg(c.Context(), secOpt)
				return printLocalBench(c.OutOrStdout(), format, rep, err, secClock)
			}
			if args[0] == "fl" {
				if flOpt.Clients < 1 || flOpt.Params < 1 || flOpt.Rounds < 1 {
					return cli.Usagef("--fl-clients, --fl-params and --fl-rounds must be positive")
				}
				if flOpt.Now, err = benchClock(flClock, "--fl-clock"); err != nil {
					return err
				}
				rep, err := flbench.RunFL(c.Context(), flOpt)
				return printLocalBench(c.OutOrStdout(), format, rep, err, flClock)
			}
			if load.Agents < 1 || load.Interval <= 0 || load.Duration <= 0 {
				return cli.Usagef("--agents, --interval and --duration must be positive")
			}
			if ingestBatches < 0 || batchSize < 1 {
				return cli.Usagef("--ingest-batches must not be negative and --batch-size must be positive")
			}
			if serverMode != serverChild && serverMode != serverInProcess {
				return cli.Usagef("--server-mode %q: want child or in-process", serverMode)
			}
			limit, applyLimit, limitDesc, err := memoryLimit(memLimit, c.Flags().Changed("memory-limit"), a.getenv("GOMEMLIMIT"))
			if err != nil {
				return cli.Usagef("--memory-limit: %v", err)
			}
			if dir == "" {
				d, err := os.MkdirTemp("", "edgectl-bench-")
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				defer os.RemoveAll(d)
				dir = d
			}
			ctx := c.Context()
			logger := cli.Discard()
			if format == cli.FormatTable {
				logger, _ = cli.NewLogger(c.ErrOrStderr(), "info", "text")
			}
			load.Logger = logger

			rep := bench.Report{Suite: "controlplane", Machine: map[string]string{
				"goos": runtime.GOOS, "goarch": runtime.GOARCH, "cpus": fmt.Sprint(runtime.NumCPU()),
				"version":  buildinfo.Get().Version,
				"agents":   fmt.Sprint(load.Agents),
				"interval": load.Interval.String(),
				"duration": load.Duration.String(),
			}}

			env := clientconfig.FromEnv(a.getenv)
			external := a.flags.Server != "" || a.flags.Context != "" || env.Server != ""
			var stopServer func() error
			switch {
			case external:
				conn, err := a.resolve(c)
				if err != nil {
					return err
				}
				load.URL, load.AdminToken, load.CAPEM = conn.Server, conn.Token, conn.CAPEM
				rep.Machine["server"] = conn.Server
			case serverMode == serverInProcess:
				if applyLimit {
					prev := debug.SetMemoryLimit(limit)
					defer debug.SetMemoryLimit(prev)
				}
				srv, err := controlplane.New(controlplane.Config{
					DataDir: filepath.Join(dir, "server"), Listen: "127.0.0.1:0", Logger: cli.Discard(),
					HeartbeatInterval: load.Interval, Version: buildinfo.Get().Version,
				})
				if err != nil {
					return err
				}
				if err := srv.Start(); err != nil {
					srv.Close()
					return err
				}
				stopServer = srv.Close
				tok, err := srv.AdminToken()
				if err != nil {
					srv.Close()
					return fmt.Errorf("bench: %w", err)
				}
				load.URL, load.AdminToken, load.CAPEM = srv.URL(), tok, srv.CAPEM()
				rep.Machine["server"] = "in-process (server_rss includes the load generator)"
				rep.Machine["memory_limit"] = limitDesc
			default:
				info, stop, err := a.startChildServer(ctx, c.ErrOrStderr(), filepath.Join(dir, "server"), memLimit, c.Flags().Changed("memory-limit"), load.Interval)
				if err != nil {
					return err
				}
				stopServer = stop
				tok, err := os.ReadFile(info.AdminTokenFile)
				if err != nil {
					stop()
					return fmt.Errorf("bench: %w", err)
				}
				caPEM, err := os.ReadFile(info.CAFile)
				if err != nil {
					stop()
					return fmt.Errorf("bench: %w", err)
				}
				load.URL, load.AdminToken, load.CAPEM = info.URL, strings.TrimSpace(string(tok)), caPEM
				rep.Machine["server"] = fmt.Sprintf("child process %d", info.PID)
				rep.Machine["memory_limit"] = limitDesc
			}

			logger.Info("heartbeat load", "agents", load.Agents, "interval", load.Interval, "duration", load.Duration, "server", load.URL)
			lr, err := cpbench.RunHeartbeatLoad(ctx, load)
			if stopServer != nil {
				if serr := stopServer(); serr != nil && err == nil {
					logger.Warn("stopping the server", "err", serr)
				}
			}
			if err != nil {
				return err
			}
			if lr.Errors > 0 {
				fmt.Fprintf(c.ErrOrStderr(), "%s: warning: %d of %d heartbeats failed; first: %s\n", c.Root().Name(), lr.Errors, lr.Heartbeats+lr.Errors, lr.FirstError)
			}
			rep.Results = append(rep.Results, loadResults(lr)...)

			if ingestBatches > 0 {
				logger.Info("telemetry ingest", "batches", ingestBatches, "batch_size", batchSize)
				idir := filepath.Join(dir, "ingest")
				if err := os.MkdirAll(idir, 0o700); err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				ir, err := cpbench.RunIngestBench(ctx, cpbench.IngestBenchOptions{Dir: idir, Batches: ingestBatches, BatchSize: batchSize})
				if err != nil {
					return err
				}
				rep.Results = append(rep.Results, bench.Result{
					Name: "telemetry_ingest", Unit: "readings/s", Value: ir.StoreRate,
					Baseline: &bench.Baseline{Name: "sqlite_insert", Value: ir.PlainRate}, Ratio: ir.Ratio,
				})
				rep.Machine["ingest_readings"] = fmt.Sprint(ir.Readings)
				rep.Machine["ingest_batch_size"] = fmt.Sprint(ir.BatchSize)
			}
			return cli.Print(c.OutOrStdout(), format, rep, func(w io.Writer) error { return printBenchReport(w, rep) })
		},
	}
	out.Register(c)
	f := c.Flags()
	f.IntVar(&load.Agents, "agents", 100, "simulated agents, each with its own identity and connection")
	f.DurationVar(&load.Interval, "interval", 10*time.Second, "heartbeat interval of each agent")
	f.DurationVar(&load.Duration, "duration", 20*time.Second, "length of the measured phase")
	f.IntVar(&load.Workers, "workers", 0, "heartbeats in flight at most (0: 256)")
	f.StringVar(&serverMode, "server-mode", serverChild, "without --server: run the server as a child process (child) or in this process (in-process)")
	f.StringVar(&memLimit, "memory-limit", defaultMemoryLimit, "Go soft memory limit of the server (as for 'edgectl controlplane')")
	f.StringVar(&dir, "dir", "", "scratch directory for the server and ingest databases (default: a temporary directory, removed afterwards)")
	f.IntVar(&ingestBatches, "ingest-batches", 200, "telemetry ingest: batches to write (0 skips the ingest measurement)")
	f.IntVar(&batchSize, "batch-size", 1000, "telemetry ingest: readings per batch")
	f.IntVar(&flOpt.Clients, "fl-clients", 1000, "fl: updates per aggregation")
	f.IntVar(&flOpt.Params, "fl-params", 10000, "fl: model parameters per update")
	f.IntVar(&flOpt.Rounds, "fl-rounds", 3, "fl: measurement rounds (medians are reported)")
	f.Uint64Var(&flOpt.Seed, "fl-seed", 1, "fl: seed of the random updates")
	f.StringVar(&flClock, "fl-clock", "cpu", "fl: time by this process's CPU time (cpu: per-core cost, robust to other load on the machine) or by the wall clock (wall)")
	f.IntVar(&greenOpt.Jobs, "green-jobs", 10000, "green: jobs placed per run")
	f.IntVar(&greenOpt.Slots, "green-slots", 96, "green: quarter-hour slots in the grid")
	f.IntVar(&greenOpt.Capacity, "green-capacity", 0, "green: jobs one slot holds at once (0: jobs/8)")
	f.IntVar(&greenOpt.Rounds, "green-rounds", 5, "green: measurement rounds (medians are reported)")
	f.Uint64Var(&greenOpt.Seed, "green-seed", 1, "green: seed of the grid and the jobs")
	f.StringVar(&greenClock, "green-clock", "cpu", "green: time by this process's CPU time (cpu) or by the wall clock (wall)")
	f.StringVar(&secSizes, "secagg-sizes", "36x3206,100x10000", "secagg: rounds to run, CLIENTSxVALUES, comma-separated")
	f.Float64Var(&secOpt.NumShares, "secagg-shares", 0.5, "secagg: num_shares (a count > 2, or a proportion of the clients in (0, 1])")
	f.Float64Var(&secOpt.Threshold, "secagg-threshold", 0.5, "secagg: reconstruction_threshold (a count, or a proportion of num_shares)")
	f.Float64Var(&secOpt.Dropout, "secagg-dropout", 0.2, "secagg: fraction of clients dropping after sending their shares")
	f.IntVar(&secOpt.Rounds, "secagg-rounds", 3, "secagg: rounds per size (medians are reported)")
	f.Uint64Var(&secOpt.Seed, "secagg-seed", 1, "secagg: seed of the deltas and the dropouts")
	f.StringVar(&secClock, "secagg-clock", "cpu", "secagg: time by this process's CPU time (cpu) or by the wall clock (wall)")
	return c
}

// printLocalBench prints the report of a local suite timed by clock.
func printLocalBench(w io.Writer, format string, rep bench.Report, err error, clock string) error {
	if err != nil {
		return err
	}
	rep.Machine["clock"] = clock
	return cli.Print(w, format, rep, func(w io.Writer) error { return printBenchReport(w, rep) })
}

// benchClock returns the clock a local suite is timed by: this process's
// CPU time (cpu) or nil for the wall clock (wall).
func benchClock(name, flag string) (func() time.Time, error) {
	switch name {
	case "cpu":
		return func() time.Time { return time.Unix(0, int64(procstat.CPUSeconds()*1e9)) }, nil
	case "wall":
		return nil, nil
	}
	return nil, cli.Usagef("%s %q: want cpu or wall", flag, name)
}

// loadResults turns a load report into bench results.
func loadResults(lr cpbench.LoadReport) []bench.Result {
	res := []bench.Result{
		{Name: "heartbeat_latency_p50", Unit: "ms", Value: lr.P50MS},
		{Name: "heartbeat_latency_p90", Unit: "ms", Value: lr.P90MS},
		{Name: "heartbeat_latency_p99", Unit: "ms", Value: lr.P99MS},
		{Name: "heartbeat_latency_max", Unit: "ms", Value: lr.MaxMS},
		{Name: "heartbeat_rate", Unit: "heartbeats/s", Value: lr.AchievedRate,
			Baseline: &bench.Baseline{Name: "target_rate", Value: lr.TargetRate}, Ratio: ratio(lr.AchievedRate, lr.TargetRate)},
		{Name: "heartbeat_errors", Unit: "count", Value: float64(lr.Errors)},
		{Name: "server_rss", Unit: "MB", Value: float64(lr.ServerRSSBytes) / 1e6},
		{Name: "server_cpu_per_heartbeat", Unit: "ms", Value: lr.ServerCPUPerBeatMS},
		{Name: "agents_online_at_end", Unit: "count", Value: float64(lr.OnlineAtEnd)},
	}
	if lr.ServerP99UpperMS > 0 && !math.IsInf(lr.ServerP99UpperMS, 0) {
		res = append(res, bench.Result{Name: "server_heartbeat_p99_upper_bound", Unit: "ms", Value: lr.ServerP99UpperMS})
	}
	return res
}

func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}

func printBenchReport(w io.Writer, r bench.Report) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "suite %s\n", r.Suite)
	fmt.Fprintln(tw, "NAME\tVALUE\tUNIT\tBASELINE\tBASELINE VALUE\tRATIO")
	for _, res := range r.Results {
		if res.Baseline == nil {
			prec := 2
			if res.Unit == "count" {
				prec = 0
			}
			fmt.Fprintf(tw, "%s\t%.*f\t%s\t-\t-\t-\n", res.Name, prec, res.Value, res.Unit)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%.1f\t%.3f\n", res.Name, res.Value, res.Unit, res.Baseline.Name, res.Baseline.Value, res.Ratio)
	}
	for _, k := range sortedKeys(r.Machine) {
		fmt.Fprintf(tw, "# %s\t%s\n", k, r.Machine[k])
	}
	return tw.Flush()
}

// startChildServer runs 'edgectl controlplane' as a child process on a free
// loopback port and waits until it serves. stop interrupts it and waits for
// it to exit.
func (a *app) startChildServer(ctx context.Context, stderr io.Writer, dataDir, memLimit string, memLimitSet bool, interval time.Duration) (readyInfo, func() error, error) {
	exe, env := a.selfExec()
	if exe == "" {
		return readyInfo{}, nil, errors.New("bench: cannot find the edgectl executable to start the server; use --server-mode in-process")
	}
	ready := filepath.Join(filepath.Dir(dataDir), "ready.json")
	args := []string{"controlplane", "--listen", "127.0.0.1:0", "--data", dataDir, "--ready-file", ready,
		"--log-level", "warn", "--heartbeat-interval", interval.String()}
	if memLimitSet || a.getenv("GOMEMLIMIT") == "" {
		args = append(args, "--memory-limit", memLimit)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	cmd.Stdout = io.Discard
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return readyInfo{}, nil, fmt.Errorf("bench: start the server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			return err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("bench: server did not stop within 20s; killed")
		}
	}
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if data, err := os.ReadFile(ready); err == nil {
			var info readyInfo
			if err := json.Unmarshal(data, &info); err != nil {
				stop()
				return readyInfo{}, nil, fmt.Errorf("bench: server ready file: %w", err)
			}
			return info, stop, nil
		}
		select {
		case err := <-exited:
			return readyInfo{}, nil, fmt.Errorf("bench: the server exited before serving: %v", err)
		case <-ctx.Done():
			stop()
			return readyInfo{}, nil, ctx.Err()
		case <-deadline.C:
			stop()
			return readyInfo{}, nil, errors.New("bench: the server did not start within 60s")
		case <-tick.C:
		}
	}
}
