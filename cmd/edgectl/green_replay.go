package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// greenReplayOutput is what 'green replay' prints.
type greenReplayOutput struct {
	Trace         string                  `json:"trace"`
	TraceStats    greensched.TraceStats   `json:"trace_stats"`
	First         string                  `json:"first"`
	Until         string                  `json:"until"`
	Every         string                  `json:"every"`
	JobDuration   string                  `json:"job_duration"`
	Window        string                  `json:"window"`
	Interruptible bool                    `json:"interruptible"`
	RawForecast   bool                    `json:"raw_forecast"`
	OneShot       bool                    `json:"one_shot"`
	Report        greensched.ReplayReport `json:"result"`
}

func (a *app) newGreenReplayCmd() *cobra.Command {
	var (
		out                  cli.OutputFlags
		trace, zone          string
		first, until, fcSpec string
		o                    greensched.ReplayOptions
		seeds                int
	)
	c := &cobra.Command{
		Use:   "replay --trace FILE",
		Short: "Replay a carbon trace with the scheduler and report the savings",
		Long: `replay reads a carbon trace, keeps its marks at minute 0 and 30 (15- and
45-minute samples are ignored), and places one job of --job-duration arriving
at --first, then every --every before --until, with the real scheduler: the
job may start at any mark from arrival - --window to arrival + --window; a
start whose marks are missing from the trace is not a candidate. A job's
intensity is the mean of the marks it covers.

It prints the jobs, the mean intensity at arrival and as scheduled (true
intensities, gCO2eq/kWh) and the savings, 1 - sum as scheduled / sum at
arrival, in percent.

--forecast is what the scheduler sees: perfect (the trace itself: the offline
optimum), persistence (the same time a day earlier) or noisy:E (the trace plus
Gaussian error with sigma = E x the trace mean, one draw per mark, as in
Wiesner et al., Middleware 2021), over --seeds seeds 0..N-1 (figures are the
means; --json lists each run). A noisy forecast is smoothed before scheduling
(its error is known); --raw-forecast ranks by the noisy values as they are.
Times are wall-clock times as the trace writes them.`,
		Example: `  edgectl green replay --trace ../shared/data/carbon/ger_ci_2020.csv --forecast perfect --json
  edgectl green replay --trace gb_ci_2020.csv --forecast noisy:0.05 --seeds 10
  edgectl green replay --trace fr_ci_2020.csv --job-duration 2h --window 12h --interruptible --forecast persistence`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if trace == "" {
				return cli.Usagef("--trace is required")
			}
			spec, err := greensched.ParseForecastSpec(fcSpec)
			if err != nil {
				return cli.Usagef("--forecast: %v", err)
			}
			if o.First, err = greensched.ParseWallClock(first, nil); err != nil {
				return cli.Usagef("--first: %v", err)
			}
			if o.Until, err = greensched.ParseWallClock(until, nil); err != nil {
				return cli.Usagef("--until: %v", err)
			}
			if seeds < 1 {
				return cli.Usagef("--seeds must be at least 1")
			}
			if zone == "" {
				zone = strings.TrimSuffix(filepath.Base(trace), filepath.Ext(trace))
			}
			f, err := os.Open(trace)
			if err != nil {
				return fmt.Errorf("green replay: %w", err)
			}
			defer f.Close()
			series, stats, err := greensched.ReadTrace(f, zone, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", trace, err)
			}
			marks, err := series.Marks(30 * time.Minute)
			if err != nil {
				return err
			}
			rep, err := greensched.ReplaySeeds(marks, spec, seeds, o)
			if err != nil {
				return err
			}
			res := greenReplayOutput{
				Trace: trace, TraceStats: stats,
				First: o.First.Format(greensched.TraceTimeLayout), Until: o.Until.Format(greensched.TraceTimeLayout),
				Every: o.Every.String(), JobDuration: o.Duration.String(), Window: o.Window.String(),
				Interruptible: o.Interruptible, RawForecast: o.Raw, OneShot: o.OneShot, Report: rep,
			}
			return cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error { return printGreenReplay(w, res) })
		},
	}
	out.Register(c)
	fl := c.Flags()
	fl.StringVar(&trace, "trace", "", "carbon trace CSV (Time,Carbon Intensity), e.g. ../shared/data/carbon/ger_ci_2020.csv")
	fl.StringVar(&zone, "zone", "", "zone name in the output (default: the trace's file name)")
	fl.DurationVar(&o.Duration, "job-duration", 30*time.Minute, "length of each job")
	fl.DurationVar(&o.Every, "every", 24*time.Hour, "time between arrivals")
	fl.StringVar(&first, "first", "2020-01-01 01:00", "first arrival, wall clock YYYY-MM-DD HH:MM[:SS]")
	fl.StringVar(&until, "until", "2021-01-01 00:00", "no arrival at or after this time")
	fl.DurationVar(&o.Window, "window", 8*time.Hour, "a job may start this long before or after its arrival (a multiple of 30m)")
	fl.StringVar(&fcSpec, "forecast", "perfect", "perfect, persistence or noisy:E")
	fl.IntVar(&seeds, "seeds", 1, "noisy forecast: replay with seeds 0..N-1 and report the means")
	fl.BoolVar(&o.Interruptible, "interruptible", false, "jobs may run in separate 30-minute marks")
	fl.BoolVar(&o.Raw, "raw-forecast", false, "rank by a noisy forecast as it is, without estimating the truth from it and the past")
	fl.BoolVar(&o.OneShot, "one-shot", false, "plan each job once at its earliest start instead of deciding at each mark")
	return c
}

func printGreenReplay(w io.Writer, r greenReplayOutput) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "trace\t%s (%d points, %d gaps, %d samples missing)\n", r.Trace, r.TraceStats.Points, r.TraceStats.Gaps, r.TraceStats.Missing)
	fmt.Fprintf(tw, "jobs\t%d of %s every %s from %s, window ±%s (skipped %d: arrival mark missing)\n", r.Report.Jobs, r.JobDuration, r.Every, r.First, r.Window, r.Report.Skipped)
	fmt.Fprintf(tw, "forecast\t%s (seeds %d)\n", r.Report.Forecast, r.Report.Seeds)
	fmt.Fprintf(tw, "mean intensity at arrival\t%.2f gCO2eq/kWh\n", r.Report.MeanAtArrival)
	fmt.Fprintf(tw, "mean intensity as scheduled\t%.2f gCO2eq/kWh\n", r.Report.MeanScheduled)
	fmt.Fprintf(tw, "savings\t%.2f %%\n", r.Report.SavingsPercent)
	return tw.Flush()
}
