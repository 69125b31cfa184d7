package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsCancelCmd() *cobra.Command {
	var (
		out    cli.OutputFlags
		reason string
	)
	c := &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a running federated-learning job",
		Long: `cancel stops a running job; its open round fails and no model goes to the
registry. Requires the admin role; audited as fl.job.cancel.`,
		Example: `  edgectl fl jobs cancel flj-0a1b2c3d4e5f --reason "wrong selector"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			j, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.FLJob, error) {
				return cl.CancelFLJob(ctx, args[0], reason)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, j, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Job %s is %s after %d rounds.\n", j.ID, j.Status, j.Done)
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&reason, "reason", "", "why, recorded with the job")
	return c
}
