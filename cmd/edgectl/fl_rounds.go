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
model on the job's evaluation set, bytes up and down, and seconds.
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
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ROUND\tPHASE\tCLIENTS\tFAILURES\tREFUSED\tEXAMPLES\tACCURACY\tLOSS\tUP\tDOWN\tSECONDS")
	for _, r := range rounds {
		fmt.Fprintf(tw, "%d.%d\t%s\t%d/%d\t%d\t%s\t%d\t%s\t%s\t%d\t%d\t%.2f\n", r.Round, r.Attempt, r.Phase, r.Participants, len(r.Selected),
			r.Failures, kv(r.Refused, "%d"), r.Examples, kv(r.Accuracy, "%.4f"), kv(r.Loss, "%.4f"), r.BytesUp, r.BytesDown, r.Seconds)
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
