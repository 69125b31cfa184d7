package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newTelemetryCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "telemetry",
		Short: "Query the telemetry agents uploaded",
		RunE:  cli.GroupRunE,
	}
	c.AddCommand(a.newTelemetryQueryCmd())
	return c
}

func (a *app) newTelemetryQueryCmd() *cobra.Command {
	var (
		out              cli.OutputFlags
		q                cpapi.TelemetryQuery
		from, to, bucket string
	)
	c := &cobra.Command{
		Use:   "query [--agent ID] [--device D] [--metric M] [--from T] [--to T] [--bucket D]",
		Short: "Readings by agent, device, metric and time range, raw or downsampled",
		Long: `query prints readings of every (agent, device, metric) series that matches;
empty filters match all. --from and --to take RFC 3339 times
(2025-03-01T12:00:00Z), dates (2025-03-01), "now", or offsets from now such as
-1h, -30m or -2d; --from is inclusive, --to exclusive. With --bucket the
readings are downsampled into buckets of that width aligned to the Unix epoch,
each with min, max, avg and count; without it raw points are printed (at most
--limit over all series).`,
		Example: `  edgectl telemetry query --agent 3f2a --metric temperature --from -1h
  edgectl telemetry query --device room-1 --from -1d --bucket 1h -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			now := a.now()
			if q.From, err = cli.ParseTime(from, now); err != nil {
				return cli.Usagef("--from: %v", err)
			}
			if q.To, err = cli.ParseTime(to, now); err != nil {
				return cli.Usagef("--to: %v", err)
			}
			if !q.From.Before(q.To) {
				return cli.Usagef("--from (%s) must be before --to (%s)", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))
			}
			if bucket != "" {
				if q.Bucket, err = cli.ParseDuration(bucket); err != nil || q.Bucket < time.Second {
					return cli.Usagef("--bucket %q: want a duration of at least 1s, such as 5m or 1h", bucket)
				}
			}
			if q.Limit < 0 {
				return cli.Usagef("--limit must not be negative")
			}
			res, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.TelemetryResult, error) {
				return cl.QueryTelemetry(ctx, q)
			})
			if err != nil {
				return err
			}
			if res.Series == nil {
				res.Series = []cpapi.Series{}
			}
			if res.Truncated {
				fmt.Fprintf(c.ErrOrStderr(), "%s: raw points were cut at the limit; narrow the range, raise --limit or use --bucket\n", c.Root().Name())
			}
			return cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error { return printTelemetry(w, res) })
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&q.Agent, "agent", "", "agent id")
	f.StringVar(&q.Device, "device", "", "device id")
	f.StringVar(&q.Metric, "metric", "", "metric name")
	f.StringVar(&from, "from", "-1h", "start of the range (inclusive)")
	f.StringVar(&to, "to", "now", "end of the range (exclusive)")
	f.StringVar(&bucket, "bucket", "", "downsample into buckets of this width (e.g. 1m, 1h); empty: raw points")
	f.IntVar(&q.Limit, "limit", 0, "raw points: at most this many over all series (0: the server's default)")
	c.RegisterFlagCompletionFunc("agent", func(c *cobra.Command, _ []string, s string) ([]string, cobra.ShellCompDirective) {
		return a.completeAgentIDs(c, nil, s)
	})
	return c
}

func printTelemetry(w io.Writer, res cpapi.TelemetryResult) error {
	if len(res.Series) == 0 {
		_, err := fmt.Fprintf(w, "No readings from %s to %s.\n", res.From.Local().Format(time.RFC3339), res.To.Local().Format(time.RFC3339))
		return err
	}
	tw := cli.NewTable(w)
	num := func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
	if res.BucketSeconds > 0 {
		fmt.Fprintln(tw, "AGENT\tDEVICE\tMETRIC\tBUCKET START\tCOUNT\tMIN\tAVG\tMAX")
		for _, s := range res.Series {
			for _, b := range s.Buckets {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Agent, s.Device, s.Metric, b.Start.Local().Format(time.RFC3339), b.Count, num(b.Min), num(b.Avg), num(b.Max))
			}
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "AGENT\tDEVICE\tMETRIC\tTIME\tVALUE")
	for _, s := range res.Series {
		for _, p := range s.Points {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Agent, s.Device, s.Metric, p.TS.Local().Format(time.RFC3339Nano), num(p.Value))
		}
	}
	return tw.Flush()
}
