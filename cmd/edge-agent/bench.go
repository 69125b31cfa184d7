package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func newBenchCmd() *cobra.Command {
	var (
		asJSON bool
		dir    string
		rounds int
		crdtO  bench.CRDTOptions
	)
	c := &cobra.Command{
		Use:   "bench SUITE",
		Short: "Measure a subsystem beside its baseline in the same run (suites: crdt, crypto)",
		Long: `bench runs a benchmark suite. Each figure is measured beside a baseline doing
the same work in the same run, interleaved over several rounds; the report
gives medians and ratio = ours / baseline (higher is better).

Suites:
  crdt     CRDT store local writes and remote-delta merges beside plain SQLite inserts
  crypto   envelope seal/open beside raw AES-256-GCM; HPKE, X-Wing and ML-DSA beside circl called bare`,
		Example: "  edge-agent bench crdt --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
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
			default:
				return cli.Usagef("unknown bench suite %q (suites: crdt, crypto)", args[0])
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
	return c
}

func printBench(w io.Writer, r bench.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "suite %s\n", r.Suite)
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
