package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newGreenCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "green",
		Short: "Carbon-aware scheduling: replay a carbon trace with the scheduler",
		Long: `green works with greensched, the scheduler that places deferrable work in the
greenest window (by grid carbon intensity) its deadline allows.

replay runs the real scheduler over a carbon trace (the format of
../shared/data/carbon: Time,Carbon Intensity) and reports the savings against
running every job at its arrival.`,
		Example: `  edgectl green replay --trace ../shared/data/carbon/ger_ci_2020.csv --forecast perfect --json`,
		RunE:    cli.GroupRunE,
	}
	c.AddCommand(a.newGreenReplayCmd())
	return c
}
