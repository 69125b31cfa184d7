package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

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
		dp       string
		secAgg   string
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
(0.01), solver (sgd), mu, seed, evaluation {dataset, split, seed},
federated_stats (a statistics round before round 1 sets the schema's mean and
std from the clients' counts, sums and sums of squares; default on when the
schema has none), dp {mode, noise_multiplier, clip, delta (1e-5),
epsilon_budget (0: none)}. --rounds, --selector and --dp override the file's;
--dp MODE:z=Z,C=C[,delta=D][,budget=E] sets differential privacy: central (the
control plane clips each update to C and adds noise z·C/m to the mean of m)
or local (each agent clips and noises its own update, σ = z·C); the job stops
before a round that would spend more than the ε budget. Requires the admin
role.`,
		Example: `  edgectl fl jobs create --file occupancy-fedavg.json
  edgectl fl jobs create --file job.json --rounds 20 --selector site=berlin --json
  edgectl fl jobs create --file job.json --dp central:z=1.0,C=1.0,budget=8
  edgectl fl jobs create --file job.json --dp local:z=0.7,C=0.5,delta=1e-6`,
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
			if c.Flags().Changed("dp") {
				if spec.DP, err = coord.ParseDP(dp); err != nil {
					return cli.Usagef("--dp: %s", strings.TrimPrefix(err.Error(), coord.ErrSpec.Error()+": "))
				}
			}
			if c.Flags().Changed("secagg") {
				if spec.SecAgg, err = coord.ParseSecAgg(secAgg); err != nil {
					return cli.Usagef("--secagg: %s", strings.TrimPrefix(err.Error(), coord.ErrSpec.Error()+": "))
				}
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
	c.Flags().StringVar(&dp, "dp", "", "differential privacy MODE:z=Z,C=C[,delta=D][,budget=E], MODE central or local (overrides the spec's)")
	c.Flags().StringVar(&secAgg, "secagg", "", "secure aggregation (SecAgg+) num_shares=N,reconstruction_threshold=T[,clipping_range=C,quantization_range=Q,modulus_range=M,max_weight=W,stage_timeout=D] (overrides the spec's)")
	return c
}
