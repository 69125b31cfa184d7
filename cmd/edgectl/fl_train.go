package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// flTrainResult is what 'fl train' prints.
type flTrainResult struct {
	datasets.RunResult
	DataDir string  `json:"data_dir"`
	Seconds float64 `json:"seconds"`
	// ModelFile and ModelDigest are where --out wrote the model and its
	// SHA-256.
	ModelFile   string `json:"model_file,omitempty"`
	ModelDigest string `json:"model_digest,omitempty"`
}

func (a *app) newFLTrainCmd() *cobra.Command {
	var (
		out      cli.OutputFlags
		dataset  string
		model    string
		dataDir  string
		seed     uint64
		solver   string
		momentum float64
		outFile  string
		name     string
		version  string
	)
	cfg := datasets.DefaultRunConfig("", 0)
	c := &cobra.Command{
		Use:   "train --dataset wisdm|occupancy --model lr|mlp:W[,W...]",
		Short: "Train one model on a whole data set in this process and print its test accuracy",
		Long: `train reads a public data set from the shared data directory (--data, else
EDGEFLEET_DATA, else ../shared/data), splits it, fits the feature
normalisation on the training part, trains one model with fedlearn's
gorgonia trainer and prints its accuracy on each test set (with --json also
the loss and training accuracy of every epoch). --out writes the trained
model, with its feature schema and normalisation, as a model file.

Data sets and splits:
  wisdm      WISDM v1.1 (36 users, 43 features, 6 activities): each user's
             examples shuffled with --seed, the first max(1, n/5) of each
             user to test, the rest to train.
  occupancy  UCI occupancy detection (5 sensor features, empty/occupied):
             train on datatraining.txt, test on datatest.txt and
             datatest2.txt.
Missing values are imputed with the training means; every feature is
standardised with the training mean and standard deviation.

--seed also draws the initial weights and the order of the examples in each
epoch: the same command gives the same numbers, bit for bit.

The defaults (Adam, learning rate 0.001, batch 64, L2 0.001, 60 epochs) reach
about 97.9 % / 99.2 % on occupancy's test sets with lr and about 83 % on
WISDM with mlp:64 (mean of seeds 0-4).`,
		Example: `  edgectl fl train --dataset occupancy --model lr
  edgectl fl train --dataset wisdm --model mlp:64 --seed 3 --json
  edgectl fl train --dataset wisdm --model mlp:64 --solver momentum --lr 0.01 --momentum 0.9 --epochs 30`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if !slices.Contains(datasets.Names, dataset) {
				return cli.Usagef("--dataset %q: want %s", dataset, strings.Join(datasets.Names, " or "))
			}
			if _, err := fedlearn.ParseArch(model, 1, 2); err != nil {
				return cli.Usagef("--model: %v", err)
			}
			if cfg.Epochs < 1 {
				return cli.Usagef("--epochs must be at least 1")
			}
			cfg.Model, cfg.Train.Seed, cfg.Train.Solver = model, seed, fedlearn.Solver(solver)
			if cfg.Train.Solver == fedlearn.SolverMomentum && !c.Flags().Changed("momentum") {
				momentum = 0.9
			}
			if cfg.Train.Solver == fedlearn.SolverMomentum {
				cfg.Train.Momentum = momentum
			} else if momentum != 0 {
				return cli.Usagef("--momentum is only for --solver momentum")
			}
			if outFile != "" {
				if name == "" {
					name = dataset + "-" + strings.NewReplacer(":", "", ",", "-").Replace(model)
				}
				if err := fedlearn.CheckName(name); err != nil {
					return cli.Usagef("--name: %v", err)
				}
				if err := fedlearn.CheckVersion(version); err != nil {
					return cli.Usagef("--version: %v", err)
				}
			}
			dir := datasets.Dir(dataDir, a.getenv)
			start := a.now()
			p, err := datasets.Load(dir, dataset, seed)
			if err != nil {
				return err
			}
			var progress io.Writer = io.Discard
			if format == cli.FormatTable {
				progress = c.ErrOrStderr()
			}
			cfg.OnEpoch = func(e datasets.EpochResult) {
				if e.Epoch%10 == 0 || e.Epoch == cfg.Epochs {
					fmt.Fprintf(progress, "epoch %d/%d: loss %.4f, train accuracy %.2f %%\n", e.Epoch, cfg.Epochs, e.Loss, 100*e.TrainAccuracy)
				}
			}
			res, err := datasets.Run(p, cfg)
			if err != nil {
				return err
			}
			r := flTrainResult{RunResult: res, DataDir: dir, Seconds: a.now().Sub(start).Seconds()}
			if outFile != "" {
				mf, err := res.ModelFile(p, name, version, a.now())
				if err != nil {
					return err
				}
				b, err := mf.Encode()
				if err != nil {
					return err
				}
				if err := os.WriteFile(outFile, b, 0o644); err != nil {
					return fmt.Errorf("fl train: %w", err)
				}
				r.ModelFile, r.ModelDigest = outFile, mf.DigestHex()
			}
			return cli.Print(c.OutOrStdout(), format, r, func(w io.Writer) error { return printFLTrain(w, r) })
		},
	}
	f := c.Flags()
	f.StringVar(&dataset, "dataset", "", "data set: wisdm or occupancy (required)")
	f.StringVar(&model, "model", "", "model: lr, or mlp:W[,W...] (ReLU hidden layers of these widths), e.g. mlp:64 (required)")
	f.StringVar(&dataDir, "data", "", "shared data directory (default $EDGEFLEET_DATA, else ../shared/data)")
	f.Uint64Var(&seed, "seed", 0, "seed of the WISDM split, the initial weights and the example order")
	f.IntVar(&cfg.Epochs, "epochs", cfg.Epochs, "passes over the training set")
	f.StringVar(&solver, "solver", string(cfg.Train.Solver), "solver: sgd, momentum or adam")
	f.Float64Var(&cfg.Train.LearnRate, "lr", cfg.Train.LearnRate, "learning rate")
	f.Float64Var(&momentum, "momentum", 0, "momentum of --solver momentum (default 0.9 with it)")
	f.IntVar(&cfg.Train.BatchSize, "batch", cfg.Train.BatchSize, "mini-batch size")
	f.Float64Var(&cfg.Train.L2, "l2", cfg.Train.L2, "L2 penalty l2/2·‖W‖² on the weight matrices")
	f.StringVar(&outFile, "out", "", "write the trained model to this model file (for 'edgectl models push')")
	f.StringVar(&name, "name", "", "model name in the --out file (default DATASET-MODEL, e.g. wisdm-mlp64)")
	f.StringVar(&version, "version", "1", "model version in the --out file")
	c.MarkFlagRequired("dataset")
	c.MarkFlagRequired("model")
	out.Register(c)
	return c
}

func printFLTrain(w io.Writer, r flTrainResult) error {
	tw := cli.NewTable(w)
	t := r.Config
	fmt.Fprintf(tw, "Data set:\t%s (%d training examples, from %s)\n", r.Dataset, r.TrainExamples, r.DataDir)
	fmt.Fprintf(tw, "Model:\t%s, %d inputs, %d classes, %d parameters\n", r.Model, r.Arch.Inputs, r.Arch.Classes, r.Arch.NumParams())
	solver := string(t.Solver)
	if t.Solver == fedlearn.SolverMomentum {
		solver += fmt.Sprintf(" %g", t.Momentum)
	}
	fmt.Fprintf(tw, "Training:\t%s, learning rate %g, batch %d, L2 %g, %d epochs, seed %d\n", solver, t.LearnRate, t.BatchSize, t.L2, len(r.Epochs), t.Seed)
	if r.ModelFile != "" {
		fmt.Fprintf(tw, "Model file:\t%s (SHA-256 %s)\n", r.ModelFile, r.ModelDigest)
	}
	fmt.Fprintf(tw, "Took:\t%.1f s\n", r.Seconds)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = cli.NewTable(w)
	fmt.Fprintf(tw, "PART\tEXAMPLES\tLOSS\tACCURACY\n")
	fmt.Fprintf(tw, "train\t%d\t%.4f\t%.2f %%\n", r.TrainExamples, r.TrainLoss, 100*r.TrainAccuracy)
	for _, s := range r.Tests {
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%.2f %%\n", s.Name, s.Examples, s.Loss, 100*s.Accuracy)
	}
	return tw.Flush()
}
