package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsGetCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "get JOB",
		Short:   "Show a federated-learning job and its current round",
		Long:    `get shows one job: status, model, strategy, rounds done, clients and the round in progress.`,
		Example: `  edgectl fl jobs get flj-0a1b2c3d4e5f --json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			j, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.FLJob, error) {
				return cl.GetFLJob(ctx, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, j, func(w io.Writer) error { return printFLJob(w, j) })
		},
	}
	out.Register(c)
	return c
}
