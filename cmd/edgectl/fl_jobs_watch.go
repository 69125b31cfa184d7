package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsWatchCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		interval time.Duration
	)
	c := &cobra.Command{
		Use:   "watch JOB",
		Short: "Follow a federated-learning job's rounds until it ends",
		Long: `watch prints each round attempt of the job as it closes (aggregated or
failed), asking the control plane every --interval, and returns when the job
has finished: exit status 0 when it is done, 1 when it failed or was canceled.
--json prints one JSON round record per line, then the job.`,
		Example: `  edgectl fl jobs watch flj-0a1b2c3d4e5f
  edgectl fl jobs watch flj-0a1b2c3d4e5f --json --interval 5s`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if interval <= 0 {
				return cli.Usagef("--interval %s: want a positive duration", interval)
			}
			w := c.OutOrStdout()
			enc := json.NewEncoder(w)
			shown := map[[2]int]bool{}
			for {
				resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.FLRoundsResponse, error) {
					return cl.FLRounds(ctx, args[0])
				})
				if err != nil {
					return err
				}
				var fresh []cpapi.FLRound
				for _, r := range resp.Rounds {
					k := [2]int{r.Round, r.Attempt}
					if r.Closed != nil && !shown[k] {
						shown[k] = true
						fresh = append(fresh, r)
					}
				}
				for _, r := range fresh {
					if format == cli.FormatJSON {
						if err := enc.Encode(r); err != nil {
							return err
						}
					} else if err := printFLRounds(w, []cpapi.FLRound{r}); err != nil {
						return err
					}
				}
				if j := resp.Job; j.Status != coord.JobRunning {
					if format == cli.FormatJSON {
						if err := enc.Encode(j); err != nil {
							return err
						}
					} else {
						fmt.Fprintf(w, "Job %s %s after %d rounds.\n", j.ID, j.Status, j.Done)
					}
					if j.Status != coord.JobDone {
						return fmt.Errorf("edgectl: job %s %s: %s", j.ID, j.Status, j.Reason)
					}
					return nil
				}
				select {
				case <-c.Context().Done():
					return c.Context().Err()
				case <-time.After(interval):
				}
			}
		},
	}
	out.Register(c)
	c.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to ask")
	return c
}
