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

func (a *app) newModelsListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the stored model versions and where they are deployed",
		Long: `list shows every stored model version (by name, oldest first) with its
architecture, held-out accuracy and the selectors it is active on.

--json prints {models: [...], deployments: [...]} with the active
deployments.`,
		Example: `  edgectl models list
  edgectl models list --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.ModelsResponse, error) {
				return cl.ListModels(ctx)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, resp, func(w io.Writer) error { return printModels(w, resp) })
		},
	}
	out.Register(c)
	return c
}

func printModels(w io.Writer, resp cpapi.ModelsResponse) error {
	if len(resp.Models) == 0 {
		_, err := fmt.Fprintln(w, "No models.")
		return err
	}
	active := map[[2]string][]string{}
	for _, d := range resp.Deployments {
		k := [2]string{d.Name, d.Version}
		active[k] = append(active[k], d.Selector)
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "MODEL\tVERSION\tARCH\tACCURACY\tDIGEST\tPUSHED\tDEPLOYED TO")
	for _, m := range resp.Models {
		to := "-"
		if s := active[[2]string{m.Name, m.Version}]; len(s) > 0 {
			to = cell(strings.Join(s, "; "), 80)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f%%\t%.12s\t%s\t%s\n", cell(m.Name, 0), cell(m.Version, 0), m.Arch,
			100*m.Training.Accuracy, m.Digest, m.PushedAt.Format("2006-01-02 15:04"), to)
	}
	return tw.Flush()
}
