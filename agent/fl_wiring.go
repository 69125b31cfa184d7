package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// FLFaults are the fault hooks of federated-learning rounds (Deps.FLFaults),
// for the simulator; nil hooks inject nothing.
type FLFaults struct {
	// Skip, when it returns true for a task, makes the agent sit the
	// round out without training, as a device that dropped out would.
	Skip func(task cpapi.FLTask) bool
	// Tamper may change the trained Δ in place before it is sealed (a
	// Byzantine client).
	Tamper func(task cpapi.FLTask, delta []float32)
	// Delay, when set, is called after training, before the update is
	// sealed and sent, and may block until ctx ends (a slow device).
	Delay func(ctx context.Context, task cpapi.FLTask)
}

// ErrFLSkipped: the agent sat a round out because Deps.FLFaults.Skip said so.
var ErrFLSkipped = errors.New("agent: fl round skipped (injected dropout)")

// flTrainer runs the federated-learning round tasks the uplink receives
// as local training jobs (agent/training) on the agent's stored readings.
type flTrainer struct{ a *Agent }

// flSpec is the local training job of a task: from the task's global
// weights over the task's time range, normalised with the task's schema
// (the global model's), every example used for training.
func flSpec(task cpapi.FLTask) (training.Spec, error) {
	w := fedlearn.NewWeights(task.Arch)
	if err := w.SetFlat(task.Global); err != nil {
		return training.Spec{}, fmt.Errorf("agent: fl task %s: global model: %w", task.Key(), err)
	}
	noHoldOut := 0.0
	return training.Spec{
		Base: training.NewBase(task.Arch, w), Schema: task.Schema, Labels: task.Labels,
		From: task.From, To: task.To, Normalize: training.NormalizeKeep,
		Epochs: task.Epochs, Solver: task.Solver, LearnRate: task.LearnRate, BatchSize: task.BatchSize,
		Mu: task.Mu, Seed: task.Seed, HoldOut: &noHoldOut,
	}, nil
}

// Stats implements uplink.FLTrainer: the per-feature count, sum and sum of
// squares of the raw features of the examples the task's training job
// would read, and their number; no example leaves the agent.
func (t flTrainer) Stats(ctx context.Context, task cpapi.FLTask) (fedlearn.FeatureStats, int, error) {
	m := t.a.Training()
	if m == nil {
		return fedlearn.FeatureStats{}, 0, ErrTrainingDisabled
	}
	spec, err := flSpec(task)
	if err != nil {
		return fedlearn.FeatureStats{}, 0, err
	}
	st, n, err := m.FeatureStats(ctx, spec)
	if err != nil {
		return fedlearn.FeatureStats{}, 0, fmt.Errorf("agent: fl task %s: %w", task.Key(), err)
	}
	return st, n, nil
}

// Train implements uplink.FLTrainer: the task's local training job (flSpec);
// Δ is the trained weights minus the global ones.
func (t flTrainer) Train(ctx context.Context, task cpapi.FLTask) ([]float32, int, error) {
	faults := t.a.deps.FLFaults
	if faults.Skip != nil && faults.Skip(task) {
		return nil, 0, fmt.Errorf("agent: fl task %s: %w", task.Key(), ErrFLSkipped)
	}
	m := t.a.Training()
	if m == nil {
		return nil, 0, ErrTrainingDisabled
	}
	spec, err := flSpec(task)
	if err != nil {
		return nil, 0, err
	}
	var job training.Job
	for {
		var err error
		job, err = m.Submit(spec)
		if err == nil {
			break
		}
		if !errors.Is(err, training.ErrBusy) {
			return nil, 0, fmt.Errorf("agent: fl task %s: %w", task.Key(), err)
		}
		// Another job runs (an operator's, or one resumed after a
		// restart): the round's task waits for it, within its deadline.
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("agent: fl task %s: waiting for a running training job: %w", task.Key(), ctx.Err())
		case <-time.After(time.Second):
		}
	}
	j, err := m.Wait(ctx, job.ID)
	if err != nil {
		m.Cancel(job.ID)
		return nil, 0, fmt.Errorf("agent: fl task %s: %w", task.Key(), err)
	}
	if j.State != training.StateDone {
		return nil, 0, fmt.Errorf("agent: fl task %s: training job %s %s: %s", task.Key(), j.ID, j.State, j.Error)
	}
	md, err := m.Model(job.ID)
	if err != nil {
		return nil, 0, fmt.Errorf("agent: fl task %s: %w", task.Key(), err)
	}
	local := md.Params().Flatten(nil)
	if len(local) != len(task.Global) {
		return nil, 0, fmt.Errorf("agent: fl task %s: trained %d parameters, the global model has %d", task.Key(), len(local), len(task.Global))
	}
	delta := make([]float32, len(local))
	for i := range local {
		delta[i] = float32(local[i] - task.Global[i])
	}
	if faults.Tamper != nil {
		faults.Tamper(task, delta)
	}
	if faults.Delay != nil {
		faults.Delay(ctx, task)
	}
	return delta, md.Examples, nil
}
