package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// inferenceCmd holds the flag the inference commands share.
type inferenceCmd struct {
	a *app
	// agent is --agent.
	agent string
}

func (a *app) newInferenceCmd() *cobra.Command {
	s := &inferenceCmd{a: a}
	c := &cobra.Command{
		Use:     "inference",
		Aliases: []string{"agent-models"},
		Short:   "List the models an agent serves and ask them for predictions, through its local API",
		Long: `inference talks to one agent's local HTTP API (not to the control plane): it
lists the models deployed on that agent, which run on the readings its devices
send, and asks one of them for the class of an example.

The agent API is taken from --agent, else EDGEFLEET_AGENT, else the 'agent'
field of the selected context, else ` + clientconfig.DefaultAgent + `.`,
		RunE: cli.GroupRunE,
	}
	c.PersistentFlags().StringVar(&s.agent, "agent", "", agentFlagUsage)
	c.AddCommand(s.newListCmd(), s.newPredictCmd())
	return c
}

func (s *inferenceCmd) newListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the models the agent serves",
		Long: `list shows each model the agent serves: name, version, the first 12 hex digits
of its digest, architecture, the metrics its features read (it runs for the
devices that send all of them), when this version was loaded and how many
predictions it made.

--json prints an array of {name, version, digest, arch, inputs, classes,
features [{name, metric, agg, window}], labels, metrics, loaded, predictions}.`,
		Example: `  edgectl inference list
  edgectl inference list --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			ms, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) ([]agentapi.Model, error) {
				return api.Models(ctx)
			})
			if err != nil {
				return err
			}
			ms = nonNil(ms)
			return cli.Print(c.OutOrStdout(), format, ms, func(w io.Writer) error { return printAgentModels(w, ms, s.a.now()) })
		},
	}
	out.Register(c)
	return c
}

func printAgentModels(w io.Writer, ms []agentapi.Model, now time.Time) error {
	if len(ms) == 0 {
		_, err := fmt.Fprintln(w, "No models deployed on this agent.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "NAME\tVERSION\tDIGEST\tARCH\tMETRICS\tLOADED\tPREDICTIONS")
	for _, m := range ms {
		digest := m.Digest
		if len(digest) > 12 {
			digest = digest[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\t%d\n", cell(m.Name, 0), cell(m.Version, 0), digest,
			cell(m.Arch, 0), cell(strings.Join(m.Metrics, ","), 60), now.Sub(m.Loaded).Round(time.Second), m.Predictions)
	}
	return tw.Flush()
}

func (s *inferenceCmd) newPredictCmd() *cobra.Command {
	var out cli.OutputFlags
	var named []string
	c := &cobra.Command{
		Use:   "predict MODEL [VALUE...]",
		Short: "Ask a model for the class of one example",
		Long: `predict sends one example to MODEL on the agent and prints the predicted class
and the probability of each class. Give the features either as VALUEs, in the
model's order ('edgectl inference list --json' shows it), or by name with
--feature NAME=VALUE (every feature once). A value of 'null' or '-' is
missing: the model imputes it as in training.

--json prints {model, version, class {index, label}, probabilities}.`,
		Example: `  edgectl inference predict comfort 23.5 41 850
  edgectl inference predict comfort --feature temp=23.5 --feature hum=null --feature co2_mean=850 --json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			name, values := args[0], args[1:]
			feats, err := predictFeatures(values, named)
			if err != nil {
				return err
			}
			r, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.PredictResult, error) {
				return api.Predict(ctx, name, feats)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, r, func(w io.Writer) error { return printPrediction(w, r) })
		},
	}
	c.Flags().StringArrayVar(&named, "feature", nil, "a feature by name, NAME=VALUE (repeat for each; instead of VALUEs)")
	out.Register(c)
	return c
}

// predictFeatures builds the request's features from the VALUE
// arguments or the --feature flags (one of the two).
func predictFeatures(values, named []string) (json.RawMessage, error) {
	switch {
	case len(values) > 0 && len(named) > 0:
		return nil, cli.Usagef("give the features as VALUEs or with --feature, not both")
	case len(values) == 0 && len(named) == 0:
		return nil, cli.Usagef("no features: give VALUEs in the model's order or --feature NAME=VALUE")
	}
	if len(values) > 0 {
		b := []byte{'['}
		for i, v := range values {
			lit, err := featureLiteral(fmt.Sprintf("VALUE %d", i+1), v)
			if err != nil {
				return nil, err
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, lit...)
		}
		return append(b, ']'), nil
	}
	b := []byte{'{'}
	seen := map[string]bool{}
	for i, kv := range named {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, cli.Usagef("--feature %q: want NAME=VALUE", kv)
		}
		if seen[k] {
			return nil, cli.Usagef("--feature %s given twice", k)
		}
		seen[k] = true
		lit, err := featureLiteral("--feature "+k, v)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b = append(b, ',')
		}
		kb, _ := json.Marshal(k) // a string always encodes
		b = append(append(append(b, kb...), ':'), lit...)
	}
	return append(b, '}'), nil
}

// featureLiteral is the JSON of one feature value: a finite number, or
// null for "null" and "-".
func featureLiteral(what, v string) ([]byte, error) {
	v = strings.TrimSpace(v)
	if v == "null" || v == "-" {
		return []byte("null"), nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, cli.Usagef("%s %q: want a finite number, or null (missing)", what, v)
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

func printPrediction(w io.Writer, r agentapi.PredictResult) error {
	fmt.Fprintf(w, "Model %s version %s: class %d %q\n", r.Model, r.Version, r.Class.Index, r.Class.Label)
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "CLASS\tPROBABILITY")
	for i, p := range r.Probabilities {
		fmt.Fprintf(tw, "%d\t%.6f\n", i, p)
	}
	return tw.Flush()
}
