package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// maxSpecFile bounds a job spec read from a file or stdin.
const maxSpecFile = 64 << 20

// trainCmd holds the flag the train commands share.
type trainCmd struct {
	a *app
	// agent is --agent.
	agent string
}

func (a *app) newTrainCmd() *cobra.Command {
	tc := &trainCmd{a: a}
	c := &cobra.Command{
		Use:   "train",
		Short: "Train models on an agent's own data: local training jobs through its local API",
		Long: `train runs local training jobs on one agent, through its local HTTP API: the
agent trains a model on the readings it stored itself (the data never leave
it), keeps a held-out split, reports loss and accuracy after every epoch,
checkpoints every epoch (a job resumes after the agent restarts) and keeps the
trained model for export. One job runs at a time.

A job spec is JSON (see agent/training.Spec):

  {"model": "lr", "labels": ["empty", "occupied"], "device": "room-1",
   "schema": {"features": [{"name": "co2", "metric": "CO2", "agg": "latest"},
                           {"name": "light", "metric": "Light", "agg": "mean", "window": "5m"}],
              "label": {"metric": "Occupancy"}},
   "from": "2026-12-01T00:00:00Z", "epochs": 20, "solver": "adam",
   "learn_rate": 0.01, "batch_size": 64, "hold_out": 0.2, "seed": 1}

The agent API is taken from --agent, else EDGEFLEET_AGENT, else the 'agent'
field of the selected context, else ` + clientconfig.DefaultAgent + `.`,
		Example: `  edgectl train create -f job.json --wait
  edgectl train list
  edgectl train get 20261207t101500-3f2a9c01be47 --json
  edgectl train model 20261207t101500-3f2a9c01be47 --out model.model --name room-1-occupancy`,
		RunE: cli.GroupRunE,
	}
	c.PersistentFlags().StringVar(&tc.agent, "agent", "", agentFlagUsage)
	c.AddCommand(tc.newCreateCmd(), tc.newListCmd(), tc.newGetCmd(), tc.newCancelCmd(), tc.newModelCmd())
	return c
}

func (tc *trainCmd) newCreateCmd() *cobra.Command {
	var (
		out  cli.OutputFlags
		file string
		wait bool
	)
	c := &cobra.Command{
		Use:   "create -f SPEC",
		Short: "Start a training job from a JSON spec (- reads stdin)",
		Long: `create sends the job spec to the agent, which checks it (a bad field is
refused, named) and starts the job. With --wait it follows the job until it
ends and prints its epochs; the command fails when the job fails.
--json prints the job object (id, state, epochs, epochs_done, data, history).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			spec, err := readSpec(c, file)
			if err != nil {
				return err
			}
			ac, err := tc.a.agentConn(c, tc.agent)
			if err != nil {
				return err
			}
			defer ac.close()
			j, err := agentCall(c.Context(), ac, func(ctx context.Context, api *agentapi.Client) (agentapi.TrainingJob, error) {
				return api.CreateTrainingJob(ctx, spec)
			})
			if err != nil {
				return err
			}
			if wait {
				if j, err = waitTraining(c.Context(), ac, j.ID); err != nil {
					return err
				}
			}
			if err := cli.Print(c.OutOrStdout(), format, j, func(w io.Writer) error { return printJob(w, j) }); err != nil {
				return err
			}
			if wait && j.State != "done" {
				return fmt.Errorf("training job %s %s: %s", j.ID, j.State, j.Error)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "the job spec, JSON (- for stdin)")
	c.Flags().BoolVar(&wait, "wait", false, "wait until the job ends")
	_ = c.MarkFlagRequired("file")
	out.Register(c)
	return c
}

// readSpec reads a job spec from a file or stdin ("-"), strictly.
func readSpec(c *cobra.Command, file string) (agentapi.TrainingJobSpec, error) {
	var spec agentapi.TrainingJobSpec
	r := c.InOrStdin()
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return spec, cli.Usagef("-f: %v", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxSpecFile+1))
	if err != nil {
		return spec, fmt.Errorf("read the job spec: %w", err)
	}
	if len(b) > maxSpecFile {
		return spec, cli.Usagef("-f: the job spec is larger than %d bytes", maxSpecFile)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, cli.Usagef("-f %s: not a job spec: %v", file, err)
	}
	return spec, nil
}

// waitTraining polls a job until it ends.
func waitTraining(ctx context.Context, ac *agentConn, id string) (agentapi.TrainingJob, error) {
	for {
		j, err := agentCall(ctx, ac, func(ctx context.Context, api *agentapi.Client) (agentapi.TrainingJob, error) {
			return api.TrainingJob(ctx, id)
		})
		if err != nil {
			return j, err
		}
		switch j.State {
		case "done", "failed", "canceled":
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (tc *trainCmd) newListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the agent's training jobs, newest first",
		Long: `list prints the agent's training jobs: state, model, epochs done, and the
held-out accuracy after the last finished epoch. --json prints an array of job
objects.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			jobs, err := withAgent(tc.a, c, tc.agent, func(ctx context.Context, api *agentapi.Client) ([]agentapi.TrainingJob, error) {
				return api.TrainingJobs(ctx)
			})
			if err != nil {
				return err
			}
			jobs = nonNil(jobs)
			return cli.Print(c.OutOrStdout(), format, jobs, func(w io.Writer) error { return printJobs(w, jobs, tc.a.now()) })
		},
	}
	out.Register(c)
	return c
}

func printJobs(w io.Writer, jobs []agentapi.TrainingJob, now time.Time) error {
	if len(jobs) == 0 {
		_, err := fmt.Fprintln(w, "No training jobs.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ID\tSTATE\tMODEL\tEPOCHS\tEXAMPLES\tHELD-OUT ACC\tCREATED")
	for _, j := range jobs {
		ex, acc := "-", "-"
		if j.Data != nil {
			ex = fmt.Sprintf("%d", j.Data.Kept)
		}
		if n := len(j.History); n > 0 {
			acc = fmt.Sprintf("%.4f", j.History[n-1].HeldOutAcc)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", cell(j.ID, 0), j.State, cell(j.Model, 0), j.EpochsDone, j.Epochs, ex, acc, cli.Age(now, j.Created))
	}
	return tw.Flush()
}

// printJob prints one job and its epochs.
func printJob(w io.Writer, j agentapi.TrainingJob) error {
	fmt.Fprintf(w, "Job %s: %s, model %s, %d/%d epochs.\n", j.ID, j.State, cell(j.Model, 0), j.EpochsDone, j.Epochs)
	if j.Error != "" {
		fmt.Fprintf(w, "Error: %s\n", cell(j.Error, 0))
	}
	if len(j.Resumes) > 0 {
		fmt.Fprintf(w, "Resumed from its checkpoint after epoch(s) %s.\n", strings.Trim(fmt.Sprint(j.Resumes), "[]"))
	}
	if d := j.Data; d != nil {
		fmt.Fprintf(w, "Data: %d examples from %d device(s) (%d unlabelled, %d with a missing feature), %d kept: %d to train, %d held out; per class %v.\n",
			d.Examples, len(d.Devices), d.Unlabelled, d.Incomplete, d.Kept, d.Train, d.HeldOut, d.ClassCounts)
		if d.Changed {
			fmt.Fprintln(w, "Warning: the data changed while the job was interrupted.")
		}
	}
	if len(j.History) == 0 {
		return nil
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "EPOCH\tTRAIN LOSS\tHELD-OUT LOSS\tHELD-OUT ACC\tSECONDS")
	for _, h := range j.History {
		fmt.Fprintf(tw, "%d\t%.4f\t%.4f\t%.4f\t%.2f\n", h.Epoch, h.TrainLoss, h.HeldOutLoss, h.HeldOutAcc, h.Seconds)
	}
	return tw.Flush()
}

func (tc *trainCmd) newGetCmd() *cobra.Command {
	return tc.jobCmd("get ID", "Show a training job: its state, data and the loss and accuracy of every epoch",
		func(ctx context.Context, api *agentapi.Client, id string) (agentapi.TrainingJob, error) {
			return api.TrainingJob(ctx, id)
		})
}

func (tc *trainCmd) newCancelCmd() *cobra.Command {
	return tc.jobCmd("cancel ID", "Cancel a queued or running training job",
		func(ctx context.Context, api *agentapi.Client, id string) (agentapi.TrainingJob, error) {
			return api.CancelTrainingJob(ctx, id)
		})
}

// jobCmd is a command that makes one call about job ID and prints the job.
func (tc *trainCmd) jobCmd(use, short string, call func(context.Context, *agentapi.Client, string) (agentapi.TrainingJob, error)) *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			j, err := withAgent(tc.a, c, tc.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.TrainingJob, error) {
				return call(ctx, api, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, j, func(w io.Writer) error { return printJob(w, j) })
		},
	}
	out.Register(c)
	return c
}

func (tc *trainCmd) newModelCmd() *cobra.Command {
	var (
		file, name, version string
		asJSON              bool
	)
	c := &cobra.Command{
		Use:   "model ID [--out FILE [--name NAME] [--version V]] [--json]",
		Short: "Export a finished job's model: a model file for 'edgectl models push', or JSON",
		Long: `model exports the model a finished job trained.

With --out it writes a model file (the format of 'edgectl fl train --out',
unsigned): architecture, weights, the feature schema with the normalisation it
was trained with, labels and the training metadata (data range, epochs, seed,
examples, held-out accuracy, solver). Push it to the registry with 'edgectl
models push FILE' and deploy it. --name and --version name the model (defaults
job-ID and 1). The file is written atomically.

With --json (or without --out) it prints the job's result as JSON instead:
architecture, weights, schema, labels, the number of training examples, the
held-out accuracy and the feature statistics; with --out as well, the JSON goes
to the file.`,
		Example: `  edgectl train model 20261207t101500-3f2a9c01be47 --out room-1.model --name room-1-occupancy
  edgectl models push room-1.model
  edgectl train model 20261207t101500-3f2a9c01be47 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if file == "" || asJSON {
				if name != "" || version != "" {
					return fmt.Errorf("edgectl: train model: --name and --version name a model file: give --out without --json")
				}
				return tc.writeModelJSON(c, args[0], file)
			}
			b, err := withAgent(tc.a, c, tc.agent, func(ctx context.Context, api *agentapi.Client) ([]byte, error) {
				return api.TrainedModelFile(ctx, args[0], name, version)
			})
			if err != nil {
				return err
			}
			f, err := fedlearn.Decode(b)
			if err != nil {
				return fmt.Errorf("edgectl: train model: the agent answered a model file that does not decode: %w", err)
			}
			if err := writeFileAtomic(file, b); err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.OutOrStdout(), "Wrote model %s version %s (job %s: %s, %d examples, held-out accuracy %.4f, sha256:%s) to %s.\n",
				f.Name, f.Version, args[0], f.Arch, f.Training.Examples, f.Training.Accuracy, f.DigestHex(), file)
			return err
		},
	}
	c.Flags().StringVar(&file, "out", "", "write the model file (or, with --json, the JSON) to this file")
	c.Flags().StringVar(&name, "name", "", "the model file's name (default job-ID)")
	c.Flags().StringVar(&version, "version", "", "the model file's version (default 1)")
	c.Flags().BoolVar(&asJSON, "json", false, "export the job's result as JSON instead of a model file")
	return c
}

// writeModelJSON prints a done job's result as JSON, or writes it to file.
func (tc *trainCmd) writeModelJSON(c *cobra.Command, id, file string) error {
	md, err := withAgent(tc.a, c, tc.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.TrainedModel, error) {
		return api.TrainedModel(ctx, id)
	})
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if file == "" {
		_, err = c.OutOrStdout().Write(b)
		return err
	}
	if err := writeFileAtomic(file, b); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.OutOrStdout(), "Wrote the model of job %s (%d examples, held-out accuracy %.4f) to %s.\n", md.Job, md.Examples, md.HeldOutAcc, file)
	return err
}
