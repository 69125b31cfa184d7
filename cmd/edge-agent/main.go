// Command edge-agent is the edgefleet daemon for edge devices. `edge-agent
// run` runs it; `edge-agent status` asks a running one how it is;
// `edge-agent config validate FILE` checks a configuration
// and `edge-agent config defaults` prints the default one; `edge-agent
// inspect` describes its data directory; `edge-agent bench SUITE`
// measures it beside its baselines.
package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func main() { cli.Execute(newRoot()) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "edge-agent",
		Short: "The edgefleet agent: device data, replicated state and gossip on an edge device",
	}
	root.AddCommand(newRunCmd(), newConfigCmd(), newStatusCmd(), newInspectCmd(), newBenchCmd(), cli.NewVersionCmd("edge-agent"))
	return root
}
