package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newModelsDeployCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		version  string
		selector string
	)
	c := &cobra.Command{
		Use:   "deploy NAME --version V --selector key=value[,key=value...]",
		Short: "Deploy a model version to the agents whose labels match a selector",
		Long: `deploy makes the agents whose labels have every key=value of --selector
serve version V of model NAME. Each receives the signed file sealed to its own
key (within a round trip: agents hold a request open for changes), verifies it
and swaps it in; the version it served before keeps serving until the new one
is ready. An agent matched by several deployments of one model serves the most
recent. Deploying the active version again changes nothing. Requires the admin
role.`,
		Example: `  edgectl models deploy occupancy-lr --version 3 --selector site=berlin
  edgectl models deploy wisdm-mlp --version 1 --selector site=berlin,floor=2 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if version == "" || selector == "" {
				return cli.Usagef("deploy needs --version V and --selector key=value")
			}
			if _, err := cpapi.ParseSelector(selector); err != nil {
				return cli.Usagef("--selector %q: want key=value[,key=value...]", selector)
			}
			d, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.ModelDeployment, error) {
				return cl.DeployModel(ctx, args[0], version, selector)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, d, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Model %s version %s is active on agents with %s.\n", cell(d.Name, 0), cell(d.Version, 0), cell(d.Selector, 0))
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&version, "version", "", "model version to deploy (required)")
	c.Flags().StringVar(&selector, "selector", "", "agents whose labels match key=value[,key=value...] (required)")
	return c
}
