package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// greenStatusOutput is what 'green status' prints.
type greenStatusOutput struct {
	Now   time.Time             `json:"now"`
	Zones []provider.ZoneStatus `json:"zones"`
}

func (a *app) newGreenStatusCmd() *cobra.Command {
	var (
		out              cli.OutputFlags
		providersFile    string
		traces           []string
		at               string
		duration, within time.Duration
	)
	c := &cobra.Command{
		Use:   "status (--providers FILE | --trace [ZONE=]FILE ...)",
		Short: "Carbon intensity now per zone and the next best window",
		Long: `status asks each configured carbon provider for its zone's intensity now
(gCO2eq/kWh) and its forecast until now + --within, and places a job of
--job-duration with greensched's planner: the greenest start that ends by
then. It prints both per zone, with the saving against starting at the
forecast's first slot.

Providers come from --providers, a YAML file listing provider configs
(kind: trace, carbonaware, electricitymaps or watttime; see the
greensched/provider package for the fields), and from --trace, a carbon trace
(Time,Carbon Intensity) served as if live, zone named before '=' or after the
file. --at sets "now" (wall clock, UTC), needed to read a past trace.

A provider that fails answers from its last good forecast, marked stale; with
none, the zone shows the error and the command exits 1.`,
		Example: `  edgectl green status --trace DE=../shared/data/carbon/ger_ci_2020.csv --at "2020-06-01 12:00" --json
  edgectl green status --providers carbon.yaml --job-duration 1h --within 12h`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			cfgs, err := greenStatusConfigs(providersFile, traces)
			if err != nil {
				return err
			}
			now := a.now().UTC()
			if at != "" {
				if now, err = greensched.ParseWallClock(at, nil); err != nil {
					return cli.Usagef("--at: %v", err)
				}
			}
			opts := provider.Options{Clock: clock.NewManual(now),
				Logger: slog.New(slog.NewTextHandler(c.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
			res := greenStatusOutput{Now: now}
			failed := 0
			for _, cfg := range cfgs {
				p, err := provider.New(cfg, opts)
				if err != nil {
					return err
				}
				st := provider.Status(c.Context(), p, cfg.Zone, now, duration, within)
				if st.Current == nil && st.Best == nil {
					failed++
				}
				res.Zones = append(res.Zones, st)
			}
			if err := cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error { return printGreenStatus(w, res) }); err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("green status: %d of %d zones without data", failed, len(cfgs))
			}
			return nil
		},
	}
	out.Register(c)
	fl := c.Flags()
	fl.StringVar(&providersFile, "providers", "", "YAML file with a providers: list of carbon provider configs")
	fl.StringArrayVar(&traces, "trace", nil, "carbon trace as a provider, [ZONE=]FILE (repeatable)")
	fl.StringVar(&at, "at", "", "time to treat as now, YYYY-MM-DD HH:MM[:SS] UTC (default: the system clock)")
	fl.DurationVar(&duration, "job-duration", 30*time.Minute, "length of the job to place")
	fl.DurationVar(&within, "within", 24*time.Hour, "the job must end within this long from now")
	return c
}

// greenStatusConfigs gathers the provider configs of --providers and
// --trace.
func greenStatusConfigs(file string, traces []string) ([]provider.Config, error) {
	var cfgs []provider.Config
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("green status: %w", err)
		}
		defer f.Close()
		if cfgs, err = provider.ReadConfigs(f); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	for _, t := range traces {
		zone, path, ok := strings.Cut(t, "=")
		if !ok {
			path, zone = t, strings.TrimSuffix(filepath.Base(t), filepath.Ext(t))
		}
		if zone == "" || path == "" {
			return nil, cli.Usagef("--trace %q: want [ZONE=]FILE", t)
		}
		cfgs = append(cfgs, provider.Config{Kind: provider.KindTrace, Zone: zone, TraceFile: path}.WithDefaults())
	}
	if len(cfgs) == 0 {
		return nil, cli.Usagef("no provider: give --providers FILE or --trace [ZONE=]FILE")
	}
	return cfgs, nil
}

func printGreenStatus(w io.Writer, r greenStatusOutput) error {
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ZONE\tPROVIDER\tNOW (g/kWh)\tBEST WINDOW (UTC)\tBEST (g/kWh)\tSAVING")
	for _, z := range r.Zones {
		now := "-"
		if z.Current != nil {
			now = fmt.Sprintf("%.1f", z.Current.Point.Intensity)
			if z.Current.Stale {
				now += " (stale: " + z.Current.Reason + ")"
			}
		}
		win, best, saving := "-", "-", "-"
		if b := z.Best; b != nil {
			win = b.Start.Format("2006-01-02 15:04") + " to " + b.End.Format("15:04")
			best = fmt.Sprintf("%.1f", b.Intensity)
			if b.ForecastStale {
				best += " (stale: " + b.ForecastReason + ")"
			}
			saving = fmt.Sprintf("%.1f %%", b.SavingPercent)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", z.Zone, z.Provider, now, win, best, saving)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, z := range r.Zones {
		if z.CurrentError != "" {
			fmt.Fprintf(w, "%s now: %s\n", z.Zone, z.CurrentError)
		}
		if z.BestError != "" {
			fmt.Fprintf(w, "%s best window: %s\n", z.Zone, z.BestError)
		}
	}
	return nil
}
