package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newModelsUndeployCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		selector string
	)
	c := &cobra.Command{
		Use:   "undeploy NAME --selector key=value",
		Short: "End a model's deployment on a selector: its agents stop serving it",
		Long: `undeploy ends every deployment of model NAME on a selector (the whole stack
rollback walks down): none is active there any more. The agents whose labels
match that selector, and no other selector the model is deployed to, stop
serving the model and delete its file. Models an agent did not receive from
the control plane are not touched. Requires the admin role; audited as
model.undeploy.`,
		Example: `  edgectl models undeploy occupancy-lr --selector site=berlin
  edgectl models undeploy occupancy-lr --selector site=berlin,floor=2 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if selector == "" {
				return fmt.Errorf("edgectl: models undeploy: --selector is required")
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.UndeployModelResponse, error) {
				return cl.UndeployModel(ctx, args[0], selector)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, resp, func(w io.Writer) error {
				if len(resp.Ended) == 0 {
					return nil
				}
				d := resp.Ended[0]
				_, err := fmt.Fprintf(w, "Undeployed model %s from %s (version %s was active; %d deployments ended).\n",
					cell(d.Name, 0), cell(d.Selector, 0), cell(d.Version, 0), len(resp.Ended))
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&selector, "selector", "", "the selector the model was deployed to (key=value[,key=value...]); required")
	return c
}
