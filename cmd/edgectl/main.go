// Command edgectl is the edgefleet fleet CLI. It also runs the control plane
// and `edgectl sim`, a whole simulated fleet on one machine.
package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func main() { cli.Execute(newRoot()) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "edgectl",
		Short: "Manage an edgefleet fleet, run its control plane, or simulate a fleet",
	}
	root.AddCommand(newSimCmd(), newVersionCmd())
	return root
}
