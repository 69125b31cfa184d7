package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// NewVersionCmd returns the `version` command of the binary called name.
func NewVersionCmd(name string) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the " + name + " version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			bi := buildinfo.Get()
			if asJSON {
				return PrintJSON(c.OutOrStdout(), bi)
			}
			_, err := fmt.Fprintf(c.OutOrStdout(), "%s %s (%s, %s/%s)\n", name, bi.Version, bi.GoVersion, bi.OS, bi.Arch)
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}
