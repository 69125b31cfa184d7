package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the federated-learning jobs, newest first",
		Long: `list shows every federated-learning job with its status, model, strategy and
rounds done. --json prints {jobs: [...]} (without initial weights).`,
		Example: `  edgectl fl jobs list
  edgectl fl jobs list --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			jobs, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) ([]cpapi.FLJob, error) {
				return cl.ListFLJobs(ctx)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, cpapi.FLJobsResponse{Jobs: jobs}, func(w io.Writer) error {
				if len(jobs) == 0 {
					_, err := fmt.Fprintln(w, "No federated jobs.")
					return err
				}
				tw := cli.NewTable(w)
				fmt.Fprintln(tw, "JOB\tSTATUS\tMODEL\tSTRATEGY\tROUNDS\tEPSILON\tSELECTOR\tCREATED")
				for _, j := range jobs {
					sp := flSpec(j)
					eps := "-"
					if j.Privacy != nil {
						eps = fmt.Sprintf("%.3g (%s)", j.Privacy.Epsilon, j.Privacy.Mode)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", j.ID, j.Status, cell(sp.Model, 0), strings.ToLower(sp.Strategy.Name),
						j.Done, sp.Rounds, eps, cell(sp.Selector, 40), j.Created.Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		},
	}
	out.Register(c)
	return c
}
