package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "fl",
		Short: "Federated learning: jobs across the fleet, rounds, the centralised reference",
		Long: `fl groups the federated-learning commands. 'fl jobs' creates, lists, shows,
watches and cancels federated jobs run by the control plane across the agents;
'fl rounds JOB' shows a job's rounds with their metrics. 'fl train' trains one
model on a whole public data set in this process, with the same fedlearn code
the agents train with: the baseline federated training is judged against.`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newFLTrainCmd(), a.newFLJobsCmd(), a.newFLRoundsCmd())
	return c
}
