package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newModelsRollbackCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		selector string
	)
	c := &cobra.Command{
		Use:   "rollback NAME [--selector key=value]",
		Short: "Return the agents of a selector to the model version deployed before",
		Long: `rollback marks the active deployment of model NAME on a selector rolled back:
the deployment before it becomes active again, and its agents swap back to
that version. --selector may be left out when the model is deployed to one
selector only. Rolling back the first deployment is refused (there is nothing
to return to). Requires the admin role.`,
		Example: `  edgectl models rollback occupancy-lr
  edgectl models rollback occupancy-lr --selector site=berlin --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.RollbackModelResponse, error) {
				return cl.RollbackModel(ctx, args[0], selector)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, resp, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Rolled back model %s on %s from version %s to %s.\n", cell(resp.Active.Name, 0),
					cell(resp.Active.Selector, 0), cell(resp.RolledBack.Version, 0), cell(resp.Active.Version, 0))
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&selector, "selector", "", "the selector to roll back (needed when the model is deployed to several)")
	return c
}
