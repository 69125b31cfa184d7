package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// maxModelFile bounds a model file read for push (the control plane
// refuses larger ones anyway).
const maxModelFile = 64 << 20

func (a *app) newModelsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "models",
		Aliases: []string{"model"},
		Short:   "Push, list, fetch, deploy, roll back and undeploy models in the control plane's registry",
		Long: `models manages the control plane's model registry. A model file (made by
'edgectl fl train' or an agent's training job) is pushed; the control plane
checks it (digest, architecture, weights, feature schema, labels) and signs it
with the ML-DSA-65 key it signs key messages with. A version is deployed to
the agents whose labels match a selector (key=value[,key=value...]); each of
them receives the signed file sealed to its own X-Wing key, verifies it and
swaps it in. Deployments of a model to a selector form a stack: rollback
returns those agents to the version deployed before; undeploy ends the
deployment, and those agents stop serving the model.

push, deploy, rollback and undeploy need the admin role; list and get the
viewer role.`,
		Example: `  edgectl models push occupancy-lr.model
  edgectl models list
  edgectl models deploy occupancy-lr --version 3 --selector site=berlin
  edgectl models rollback occupancy-lr
  edgectl models undeploy occupancy-lr --selector site=berlin
  edgectl models get occupancy-lr --version 3 --out occupancy-lr-3.model`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newModelsPushCmd(), a.newModelsListCmd(), a.newModelsGetCmd(), a.newModelsDeployCmd(), a.newModelsRollbackCmd(), a.newModelsUndeployCmd())
	return c
}

// printModel prints one version's description.
func printModel(w io.Writer, m cpapi.Model) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "Model:\t%s\n", cell(m.Name, 0))
	fmt.Fprintf(tw, "Version:\t%s\n", cell(m.Version, 0))
	fmt.Fprintf(tw, "Digest:\tsha256:%s\n", m.Digest)
	fmt.Fprintf(tw, "Size:\t%s\n", bytesIEC(uint64(m.Size)))
	fmt.Fprintf(tw, "Architecture:\t%s (%d inputs, %d classes)\n", m.Arch, m.Inputs, m.Classes)
	fmt.Fprintf(tw, "Features:\t%s\n", cell(strings.Join(m.Features, ", "), 120))
	fmt.Fprintf(tw, "Labels:\t%s\n", cell(strings.Join(m.Labels, ", "), 120))
	tr := m.Training
	fmt.Fprintf(tw, "Training:\t%s, %d epochs, seed %d, loss %.4g, accuracy %.2f%%\n", dash(cell(tr.Dataset, 40)), tr.Epochs, tr.Seed, tr.Loss, 100*tr.Accuracy)
	fmt.Fprintf(tw, "Created:\t%s\n", tr.Created.Format("2006-01-02 15:04:05Z07:00"))
	fmt.Fprintf(tw, "Signed by:\t%s\n", cell(m.Signer, 0))
	fmt.Fprintf(tw, "Pushed:\t%s by %s\n", m.PushedAt.Format("2006-01-02 15:04:05Z07:00"), cell(m.PushedBy, 0))
	return tw.Flush()
}

// printDeployments prints deployments as a table.
func printDeployments(w io.Writer, deps []cpapi.ModelDeployment) error {
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "MODEL\tVERSION\tSELECTOR\tDEPLOYED\tBY\tSTATE")
	for _, d := range deps {
		state := "superseded"
		switch {
		case d.Active:
			state = "active"
		case d.RolledBackAt != nil:
			state = "rolled back " + d.RolledBackAt.Format("2006-01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cell(d.Name, 0), cell(d.Version, 0), cell(d.Selector, 60),
			d.DeployedAt.Format("2006-01-02 15:04"), cell(d.DeployedBy, 0), state)
	}
	return tw.Flush()
}
