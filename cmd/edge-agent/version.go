package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func newVersionCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the edge-agent version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			bi := buildinfo.Get()
			if asJSON {
				return cli.PrintJSON(c.OutOrStdout(), bi)
			}
			_, err := fmt.Fprintf(c.OutOrStdout(), "edge-agent %s (%s, %s/%s)\n", bi.Version, bi.GoVersion, bi.OS, bi.Arch)
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}
