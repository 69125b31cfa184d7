package main

import (
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newGreenCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "green",
		Short: "Carbon-aware scheduling: intensity now and the best window, trace replay",
		Long: `green works with greensched, the scheduler that places deferrable work in the
greenest window (by grid carbon intensity) its deadline allows.

replay runs the real scheduler over a carbon trace (the format of
../shared/data/carbon: Time,Carbon Intensity) and reports the savings against
running every job at its arrival.

status shows each zone's intensity now, from a carbon provider or a trace,
and the next best window for a job.`,
		Example: `  edgectl green replay --trace ../shared/data/carbon/ger_ci_2020.csv --forecast perfect --json
  edgectl green status --trace DE=../shared/data/carbon/ger_ci_2020.csv --at "2020-06-01 12:00"`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newGreenReplayCmd(), a.newGreenStatusCmd())
	return c
}
