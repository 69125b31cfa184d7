package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLRoundsCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "rounds JOB",
		Short: "Show a federated-learning job's rounds with their metrics",
		Long: `rounds lists every round attempt of a job: its phase, participants of the
clients selected, failures (selected clients that did not report plus refused
updates), refusals by reason, examples, accuracy and loss of the new global
model on the job's evaluation set, bytes up and down, and seconds; a
statistics round (round 0, kind stats) sets the schema's normalisation; a job
with differential privacy shows the ε spent after each round (at the job's δ).
--json prints {job, rounds: [...]}.`,
		Example: `  edgectl fl rounds flj-0a1b2c3d4e5f
  edgectl fl rounds flj-0a1b2c3d4e5f --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.FLRoundsResponse, error) {
				return cl.FLRounds(ctx, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, resp, func(w io.Writer) error { return printFLRounds(w, resp.Rounds) })
		},
	}
	out.Register(c)
	return c
}

// printFLRounds prints round records as a table.
func printFLRounds(w io.Writer, rounds []cpapi.FLRound) error {
	if len(rounds) == 0 {
		_, err := fmt.Fprintln(w, "No rounds yet.")
		return err
	}
	dp := false
	for _, r := range rounds {
		dp = dp || r.Delta > 0
	}
	tw := cli.NewTable(w)
	head := "ROUND\tKIND\tPHASE\tCLIENTS\tFAILURES\tREFUSED\tEXAMPLES\tACCURACY\tLOSS\tUP\tDOWN\tSECONDS"
	if dp {
		head += "\tEPSILON"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rounds {
		kind := r.Kind
		if kind == "" {
			kind = "train"
		}
		fmt.Fprintf(tw, "%d.%d\t%s\t%s\t%d/%d\t%d\t%s\t%d\t%s\t%s\t%d\t%d\t%.2f", r.Round, r.Attempt, kind, r.Phase, r.Participants, len(r.Selected),
			r.Failures, kv(r.Refused, "%d"), r.Examples, kv(r.Accuracy, "%.4f"), kv(r.Loss, "%.4f"), r.BytesUp, r.BytesDown, r.Seconds)
		if dp {
			eps := "-"
			if r.Delta > 0 {
				eps = fmt.Sprintf("%.4f", r.Epsilon)
			}
			fmt.Fprintf(tw, "\t%s", eps)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// kv prints a map as k=v pairs in key order, "-" when empty.
func kv[V any](m map[string]V, f string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+fmt.Sprintf(f, m[k]))
	}
	return strings.Join(parts, ",")
}
