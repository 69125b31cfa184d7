package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "fl",
		Short: "Federated learning: the centralised reference training",
		Long: `fl groups the federated-learning commands. 'fl train' trains one model on a
whole public data set in this process, with the same fedlearn code the
agents train with: the baseline federated training is judged against.`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newFLTrainCmd())
	return c
}
