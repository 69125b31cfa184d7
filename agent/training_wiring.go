package agent

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/edgefleet/edgefleet/agent/training"
)

// ErrTrainingDisabled: local training is off (training.enabled false, or
// ingestion disabled: the examples are the stored readings).
var ErrTrainingDisabled = errors.New("agent: local training is disabled (training.enabled: false, or ingestion disabled)")

// trainingDir is where training jobs live, under data_dir.
const trainingDir = "training"

// Training is the agent's training job manager; nil when training is
// disabled or the agent has not started.
func (a *Agent) Training() *training.Manager {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.training
}

// startTraining opens the training jobs in data_dir/training and resumes
// an unfinished one; after startEdge (it reads the ingestion database).
func (a *Agent) startTraining() error {
	a.mu.Lock()
	store := a.ingestStore
	a.mu.Unlock()
	if !a.cfg.Training.Enabled || store == nil {
		return nil
	}
	m, err := training.New(training.Config{
		Dir:         filepath.Join(a.cfg.DataDir, trainingDir),
		Readings:    store,
		State:       stateReader{a},
		MaxExamples: a.cfg.Training.MaxExamples,
		KeepJobs:    a.cfg.Training.KeepJobs,
		Clock:       a.clk,
		Rand:        a.rnd,
		Logger:      a.log,
		Registry:    a.reg,
		Defer:       a.deferTraining,
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.training = m
	a.mu.Unlock()
	m.Start()
	return nil
}

// stopTraining interrupts the running job (it resumes from its checkpoint
// at the next start); before stopEdge closes the ingestion database.
func (a *Agent) stopTraining() {
	a.mu.Lock()
	m := a.training
	a.mu.Unlock()
	if m != nil {
		m.Close()
	}
}

// stateReader reads state labels from the replicated store.
type stateReader struct{ a *Agent }

func (s stateReader) Get(ctx context.Context, coll, key string) ([]byte, bool, error) {
	st := s.a.Store()
	if st == nil {
		return nil, false, ErrNotRunning
	}
	e, found, err := st.Get(ctx, coll, key)
	return e.Value, found, err
}
