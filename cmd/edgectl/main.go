// Command edgectl is the edgefleet fleet CLI. It also runs the control plane
// and `edgectl sim`, a whole simulated fleet on one machine.
package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func main() {
	os.Exit(cli.Run(context.Background(), newRoot(), os.Args[1:], os.Stdout, os.Stderr))
}

func newRoot() *cobra.Command { return newRootFor(newApp()) }

// newRootFor builds the command tree around a, whose environment and clock
// tests replace.
func newRootFor(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "edgectl",
		Short: "Manage an edgefleet fleet, run its control plane, or simulate a fleet",
		Long: `edgectl manages an edgefleet fleet through its control plane, runs the control
plane itself ('edgectl controlplane') and simulates a whole fleet on one
machine ('edgectl sim').

Connection: --server, --token and --ca, or EDGEFLEET_SERVER, EDGEFLEET_TOKEN
and EDGEFLEET_CA, or a context saved by 'edgectl login' (see 'edgectl config').
Exit codes: 0 success, 1 error (including errors answered by the server),
2 wrong usage (unknown command or flag, bad argument).`,
	}
	a.registerGlobalFlags(root)
	root.AddCommand(
		newSimCmd(), cli.NewVersionCmd("edgectl"),
		a.newControlplaneCmd(), a.newLoginCmd(), a.newConfigCmd(),
		a.newTokensCmd(), a.newEnrollmentTokensCmd(),
		a.newAgentsCmd(), a.newTelemetryCmd(), a.newAuditCmd(),
		a.newBenchCmd(),
		a.newDevicesCmd(), a.newStateCmd(),
		a.newKeysCmd(), a.newCryptoCmd(),
		a.newModelsCmd(),
		a.newGreenCmd(),
	)
	return root
}
