package datasets

import (
	"fmt"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Examples returns the part as the trainer's examples (sharing its slices).
func (p Part) Examples() fedlearn.Examples {
	return fedlearn.Examples{X: p.X, Y: p.Y, Inputs: p.Inputs}
}

// Defaults of a reference run, chosen on the real data (README, "Centralised
// reference"): Adam at 0.001 on batches of 64 with an L2 penalty of 0.001
// for 60 epochs meets the bars for occupancy LR and WISDM MLP(64)
// with room to spare; without the L2 penalty occupancy LR drifts below
// the datatest2 bar when trained longer.
const (
	DefaultSolver    = fedlearn.SolverAdam
	DefaultLearnRate = 0.001
	DefaultBatchSize = 64
	DefaultL2        = 0.001
	DefaultEpochs    = 60
)

// DefaultRunConfig is the reference run of model with the defaults above.
func DefaultRunConfig(model string, seed uint64) RunConfig {
	return RunConfig{Model: model, Epochs: DefaultEpochs, Train: fedlearn.TrainConfig{
		Solver: DefaultSolver, LearnRate: DefaultLearnRate, BatchSize: DefaultBatchSize, L2: DefaultL2, Seed: seed,
	}}
}

// RunConfig configures a centralised reference run: one model trained on a
// whole prepared data set in one process.
type RunConfig struct {
	// Model is the architecture as ParseArch reads it: "lr", "mlp:64".
	Model string
	// Epochs is the number of passes over the training part, >= 1.
	Epochs int
	// Train configures the trainer; its Seed also draws the initial
	// weights (fedlearn.InitWeights).
	Train fedlearn.TrainConfig
	// OnEpoch, when set, is called after every epoch.
	OnEpoch func(EpochResult)
}

// EpochResult is one epoch of a reference run.
type EpochResult struct {
	Epoch int `json:"epoch"`
	// Loss is the mean cross-entropy over the training examples as seen
	// during the epoch (the weights changed along the way).
	Loss float64 `json:"loss"`
	// TrainAccuracy is the accuracy on the training part after the epoch.
	TrainAccuracy float64 `json:"train_accuracy"`
}

// TestResult is a model's score on one test part.
type TestResult struct {
	Name     string  `json:"name"`
	Examples int     `json:"examples"`
	Loss     float64 `json:"loss"`
	Accuracy float64 `json:"accuracy"`
}

// RunResult is the outcome of a reference run.
type RunResult struct {
	Dataset       string               `json:"dataset"`
	Model         string               `json:"model"`
	Arch          fedlearn.Arch        `json:"arch"`
	Config        fedlearn.TrainConfig `json:"config"`
	TrainExamples int                  `json:"train_examples"`
	Epochs        []EpochResult        `json:"epochs"`
	// TrainLoss and TrainAccuracy score the final weights on the
	// training part.
	TrainLoss     float64      `json:"train_loss"`
	TrainAccuracy float64      `json:"train_accuracy"`
	Tests         []TestResult `json:"tests"`
	// Weights are the trained weights; Schema and Classes go with them.
	Weights fedlearn.Weights `json:"-"`
}

// Run trains cfg.Model on p's training part for cfg.Epochs epochs from
// weights drawn with cfg.Train.Seed and scores it on every test part. The
// same configuration and data give the same result, bit for bit.
func Run(p *Prepared, cfg RunConfig) (RunResult, error) {
	arch, err := fedlearn.ParseArch(cfg.Model, p.Train.Inputs, len(p.Classes))
	if err != nil {
		return RunResult{}, err
	}
	if cfg.Epochs < 1 {
		return RunResult{}, fmt.Errorf("datasets: %d epochs (want at least 1)", cfg.Epochs)
	}
	tr, err := fedlearn.NewTrainer(arch, fedlearn.InitWeights(arch, cfg.Train.Seed), cfg.Train)
	if err != nil {
		return RunResult{}, err
	}
	defer tr.Close()
	res := RunResult{Dataset: p.Name, Model: arch.String(), Arch: arch, Config: cfg.Train, TrainExamples: p.Train.Len()}
	train := p.Train.Examples()
	for e := 1; e <= cfg.Epochs; e++ {
		loss, err := tr.Epoch(train)
		if err != nil {
			return RunResult{}, err
		}
		_, acc, err := fedlearn.Evaluate(arch, tr.Weights(), train)
		if err != nil {
			return RunResult{}, err
		}
		er := EpochResult{Epoch: e, Loss: loss, TrainAccuracy: acc}
		res.Epochs = append(res.Epochs, er)
		if cfg.OnEpoch != nil {
			cfg.OnEpoch(er)
		}
	}
	res.Weights = tr.Weights()
	if res.TrainLoss, res.TrainAccuracy, err = fedlearn.Evaluate(arch, res.Weights, train); err != nil {
		return RunResult{}, err
	}
	for _, t := range p.Tests {
		loss, acc, err := fedlearn.Evaluate(arch, res.Weights, t.Examples())
		if err != nil {
			return RunResult{}, fmt.Errorf("datasets: test %s: %w", t.Name, err)
		}
		res.Tests = append(res.Tests, TestResult{Name: t.Name, Examples: t.Len(), Loss: loss, Accuracy: acc})
	}
	return res, nil
}

// ModelFile packs a run's trained model as a model file: its architecture
// and weights, p's schema (with the normalisation fitted on the training
// part) and class names, and how it was trained (the accuracy is on the
// first test part). created stamps it.
func (r RunResult) ModelFile(p *Prepared, name, version string, created time.Time) (*fedlearn.File, error) {
	t := fedlearn.Training{
		Dataset: r.Dataset, Epochs: len(r.Epochs), Seed: r.Config.Seed, Examples: r.TrainExamples,
		Params: map[string]string{
			"solver":     string(r.Config.Solver),
			"learn_rate": strconv.FormatFloat(r.Config.LearnRate, 'g', -1, 64),
			"batch_size": strconv.Itoa(r.Config.BatchSize),
			"l2":         strconv.FormatFloat(r.Config.L2, 'g', -1, 64),
		},
		Created: created.UTC(),
	}
	if r.Config.Solver == fedlearn.SolverMomentum {
		t.Params["momentum"] = strconv.FormatFloat(r.Config.Momentum, 'g', -1, 64)
	}
	if n := len(r.Epochs); n > 0 {
		t.Loss = r.Epochs[n-1].Loss
	}
	if len(r.Tests) > 0 {
		t.HeldOut, t.Accuracy = r.Tests[0].Examples, r.Tests[0].Accuracy
	}
	f := &fedlearn.File{Name: name, Version: version, Arch: r.Arch, Weights: r.Weights, Schema: p.Schema, Labels: p.Classes, Training: t}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}
