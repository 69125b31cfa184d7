package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsCreateCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		file     string
		rounds   int
		selector string
	)
	c := &cobra.Command{
		Use:   "create --file SPEC.json",
		Short: "Create a federated-learning job from a JSON spec",
		Long: `create sends a job spec (JSON, "-" reads standard input) to the control plane,
which checks it (a bad field is named) and runs the job's rounds on the agents
whose labels match its selector. Fields: model, arch, schema, labels, initial,
from, to, selector, strategy {name, and Flower's parameters: proximal_mu, eta,
eta_l, beta_1, beta_2, tau, beta, num_malicious_clients, num_clients_to_keep},
rounds (10), min_available_clients (1), fraction_fit (1), min_fit_clients (1),
min_report (0: every selected client), min_completion (0.5), max_retries (3),
round_timeout ("10m"), deadline, epochs (1), batch_size (32), learn_rate
(0.01), solver (sgd), mu, seed, evaluation {dataset, split, seed}. --rounds
and --selector override the file's. Requires the admin role.`,
		Example: `  edgectl fl jobs create --file occupancy-fedavg.json
  edgectl fl jobs create --file job.json --rounds 20 --selector site=berlin --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if file == "" {
				return cli.Usagef("create needs --file SPEC.json")
			}
			var b []byte
			if file == "-" {
				b, err = io.ReadAll(c.InOrStdin())
			} else {
				b, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("edgectl: reading the job spec: %w", err)
			}
			var spec coord.Spec
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&spec); err != nil {
				return cli.Usagef("job spec %s: %v", file, err)
			}
			if c.Flags().Changed("rounds") {
				spec.Rounds = rounds
			}
			if c.Flags().Changed("selector") {
				spec.Selector = selector
			}
			j, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.FLJob, error) {
				return cl.CreateFLJob(ctx, spec)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, j, func(w io.Writer) error {
				fmt.Fprintf(w, "Created federated job %s.\n", j.ID)
				return printFLJob(w, j)
			})
		},
	}
	out.Register(c)
	c.Flags().StringVarP(&file, "file", "f", "", `job spec, JSON ("-" for standard input; required)`)
	c.Flags().IntVar(&rounds, "rounds", 0, "number of rounds (overrides the spec's)")
	c.Flags().StringVar(&selector, "selector", "", "agents whose labels match key=value[,key=value...] (overrides the spec's)")
	return c
}
