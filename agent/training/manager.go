// Package training runs local training jobs on an agent: a job trains a
// model (package fedlearn) on this agent's own stored readings (package
// agent/ingest) for a number of epochs, keeps a seeded held-out split and
// reports loss and accuracy on it after every epoch. The data never leaves
// the device; what a finished job keeps is its model (weights, schema with
// the normalisation used, labels, example count, feature statistics), for
// export and for the federated update of the next round.
//
// One job runs at a time. Jobs live in files under the directory given
// (the agent's data_dir/training): {id}.job, the job's spec and status;
// {id}.ckpt, the trainer's state after the last finished epoch; {id}.model,
// the result. Each is written atomically (temporary file, fsync, rename,
// fsync of the directory), the checkpoint before the status, so after a
// crash (kill -9, power loss) the job resumes from the last epoch whose
// checkpoint reached the disk: the examples are read again from the store
// (same range, same seed, same sample and split), the trainer is restored,
// and training goes on with the next epoch. A resumed job whose examples
// differ from those it started with (late readings, retention) says so
// (data.changed) and goes on.
//
// Memory is bounded by the job's example cap (max_examples, at most the
// agent's training.max_examples): the examples are a uniform sample of at
// most that many, held once; the store is read a page at a time.
package training

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// Sentinel errors.
var (
	// ErrBusy: another job is queued or running.
	ErrBusy = errors.New("training: another job is running")
	// ErrNotFound: no job has that id.
	ErrNotFound = errors.New("training: no such job")
	// ErrNotDone: the job has no model (yet).
	ErrNotDone = errors.New("training: job is not done")
	// ErrClosed: the manager is closed.
	ErrClosed = errors.New("training: closed")
)

// Job states.
const (
	StateQueued    = "queued"
	StateWaiting   = "waiting"   // deferred: waiting for the scheduler's start (Spec.StartBy)
	StatePreparing = "preparing" // reading the examples
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
)

// Config configures a Manager.
type Config struct {
	// Dir holds the job files. Required.
	Dir string
	// Readings are the stored readings. Required.
	Readings Readings
	// State resolves state labels; nil refuses them at run time.
	State State
	// MaxExamples bounds a job's examples (training.max_examples).
	MaxExamples int
	// KeepJobs is how many finished jobs are kept (oldest deleted first).
	KeepJobs int
	// Clock stamps the jobs; nil means the real clock.
	Clock clock.Clock
	// Rand makes job ids; nil means crypto/rand.
	Rand io.Reader
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registry receives the metrics; nil registers none.
	Registry prometheus.Registerer
	// Defer, when set, is asked before a job runs: it returns when the job
	// may start — at once when latest is zero (no window), else at the
	// start it picks until latest (the agent's deferrable-work scheduler)
	// — and a func to call when the job has ended, which accounts its
	// energy. expected is the spec's expected duration (0: unknown). nil
	// runs jobs at once.
	Defer func(ctx context.Context, id string, latest time.Time, expected time.Duration) (done func(), err error)
}

// Job is a job's spec and status (agentapi.TrainingJob).
type Job struct {
	ID         string        `json:"id"`
	State      string        `json:"state"`
	Error      string        `json:"error,omitempty"`
	Spec       Spec          `json:"spec"`
	Model      string        `json:"model"`
	Created    time.Time     `json:"created"`
	Started    time.Time     `json:"started,omitzero"`
	Finished   time.Time     `json:"finished,omitzero"`
	Epochs     int           `json:"epochs"`
	EpochsDone int           `json:"epochs_done"`
	Resumes    []int         `json:"resumes,omitempty"`
	Data       *DataInfo     `json:"data,omitempty"`
	History    []EpochResult `json:"history"`
}

// EpochResult is one finished epoch.
type EpochResult struct {
	Epoch       int     `json:"epoch"`
	TrainLoss   float64 `json:"train_loss"`
	HeldOutLoss float64 `json:"held_out_loss"`
	HeldOutAcc  float64 `json:"held_out_accuracy"`
	Seconds     float64 `json:"seconds"`
}

// Model is a finished job's result.
type Model struct {
	Job         string                `json:"job"`
	Arch        fedlearn.Arch         `json:"arch"`
	Schema      fedlearn.Schema       `json:"schema"`
	Labels      []string              `json:"labels"`
	Weights     []Tensor              `json:"weights"`
	Examples    int                   `json:"examples"`
	Epochs      int                   `json:"epochs"`
	HeldOutAcc  float64               `json:"held_out_accuracy"`
	HeldOutLoss float64               `json:"held_out_loss"`
	Stats       fedlearn.FeatureStats `json:"stats"`
	Finished    time.Time             `json:"finished"`
}

// Params are the model's weights (sharing the data): with the job's base
// weights, the update of a federated round is Params minus them.
func (m Model) Params() fedlearn.Weights { return weights(m.Weights) }

// checkpoint is the state after a finished epoch.
type checkpoint struct {
	Epoch   int             `json:"epoch"`
	History []EpochResult   `json:"history"`
	Schema  fedlearn.Schema `json:"schema"`
	Digest  string          `json:"digest"`
	Trainer []byte          `json:"trainer"`
}

// Manager runs training jobs, one at a time.
type Manager struct {
	cfg Config
	log *slog.Logger
	clk clock.Clock
	m   *metrics

	mu     sync.Mutex
	jobs   map[string]*Job
	active string             // id of the queued or running job
	cancel context.CancelFunc // of the active job
	closed bool
	wg     sync.WaitGroup
	// changed is closed and replaced whenever a job's status changes.
	changed chan struct{}
}

// New loads the jobs in cfg.Dir. Call Start to resume an unfinished one.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" || cfg.Readings == nil {
		return nil, errors.New("training: Config.Dir and Config.Readings are required")
	}
	if cfg.MaxExamples < 2 {
		return nil, fmt.Errorf("training: max_examples %d (want at least 2)", cfg.MaxExamples)
	}
	if cfg.KeepJobs < 1 {
		cfg.KeepJobs = 1
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, clk: clock.Or(cfg.Clock), jobs: map[string]*Job{}, changed: make(chan struct{})}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.log = m.log.With("component", "training")
	var err error
	if m.m, err = newMetrics(cfg.Registry); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("training: %w", err)
	}
	// Temporary files of writes a crash interrupted.
	if stale, err := filepath.Glob(filepath.Join(cfg.Dir, ".*.tmp-*")); err == nil {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	files, err := filepath.Glob(filepath.Join(cfg.Dir, "*.job"))
	if err != nil {
		return nil, fmt.Errorf("training: %w", err)
	}
	for _, f := range files {
		var j Job
		if err := readJSON(f, &j); err != nil {
			m.log.Warn("skipping an unreadable job file", "file", f, "err", err)
			continue
		}
		m.jobs[j.ID] = &j
	}
	return m, nil
}

// Start resumes the unfinished job, if any (a job that was queued or
// running when the agent stopped).
func (m *Manager) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	var unfinished []*Job
	for _, j := range m.jobs {
		if !finished(j.State) {
			unfinished = append(unfinished, j)
		}
	}
	slices.SortFunc(unfinished, func(a, b *Job) int { return a.Created.Compare(b.Created) })
	for i, j := range unfinished {
		if i < len(unfinished)-1 { // only one can have run; fail any other
			j.State, j.Error, j.Finished = StateFailed, "superseded by a later job", m.clk.Now()
			m.persist(j)
			continue
		}
		m.log.Info("resuming training job", "job", j.ID, "epochs_done", j.EpochsDone, "epochs", j.Epochs)
		m.launch(j)
	}
}

func finished(state string) bool {
	return state == StateDone || state == StateFailed || state == StateCanceled
}

// Submit checks spec, records the job and starts it. The spec's defaults
// are filled in; To is set to now when zero. It fails with a *SpecError
// (ErrInvalidSpec) naming a bad field, ErrBusy while another job runs.
func (m *Manager) Submit(spec Spec) (Job, error) {
	now := m.clk.Now().UTC()
	arch, err := spec.resolve(now, m.cfg.MaxExamples)
	if err != nil {
		return Job{}, err
	}
	var rb [6]byte
	if _, err := io.ReadFull(m.cfg.Rand, rb[:]); err != nil {
		return Job{}, fmt.Errorf("training: job id: %w", err)
	}
	j := &Job{
		ID:      fmt.Sprintf("%s-%s", now.Format("20060102t150405"), hex.EncodeToString(rb[:])),
		State:   StateQueued,
		Spec:    spec,
		Model:   arch.String(),
		Created: now,
		Epochs:  spec.Epochs,
		History: []EpochResult{},
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Job{}, ErrClosed
	}
	if m.active != "" {
		return Job{}, fmt.Errorf("%w: %s (%s)", ErrBusy, m.active, m.jobs[m.active].State)
	}
	if err := writeJSON(m.path(j.ID, "job"), j); err != nil {
		return Job{}, err
	}
	m.jobs[j.ID] = j
	m.prune()
	m.launch(j)
	return copyJob(j), nil
}

// launch starts j's run; m.mu is held.
func (m *Manager) launch(j *Job) {
	ctx, cancel := context.WithCancel(context.Background())
	m.active, m.cancel = j.ID, cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancel()
		m.run(ctx, j.ID)
	}()
}

// Jobs lists the jobs, newest first.
func (m *Manager) Jobs() []Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Job, 0, len(m.jobs))
	for _, j := range m.jobs {
		out = append(out, copyJob(j))
	}
	slices.SortFunc(out, func(a, b Job) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out
}

// Job returns one job.
func (m *Manager) Job(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return copyJob(j), nil
}

// Wait waits until job id has finished (done, failed or canceled) or ctx
// ends, and returns it.
func (m *Manager) Wait(ctx context.Context, id string) (Job, error) {
	for {
		m.mu.Lock()
		j, ok := m.jobs[id]
		ch := m.changed
		var out Job
		if ok {
			out = copyJob(j)
		}
		m.mu.Unlock()
		if !ok {
			return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		if finished(out.State) {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-ch:
		}
	}
}

// Cancel stops a queued or running job; its checkpoint is kept but it is
// not resumed. Canceling a finished job changes nothing.
func (m *Manager) Cancel(id string) (Job, error) {
	m.mu.Lock()
	j, ok := m.jobs[id]
	if !ok {
		m.mu.Unlock()
		return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	active := m.active == id
	if active && m.cancel != nil {
		m.cancel()
	}
	out := copyJob(j)
	m.mu.Unlock()
	if active {
		return m.Wait(context.Background(), id)
	}
	return out, nil
}

// Model returns a done job's model.
func (m *Manager) Model(id string) (Model, error) {
	j, err := m.Job(id)
	if err != nil {
		return Model{}, err
	}
	if j.State != StateDone {
		return Model{}, fmt.Errorf("%w: %s is %s", ErrNotDone, id, j.State)
	}
	var md Model
	if err := readJSON(m.path(id, "model"), &md); err != nil {
		return Model{}, err
	}
	return md, nil
}

// Close stops the running job (it resumes from its checkpoint at the next
// Start) and waits for it.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	if m.cancel != nil {
		m.cancel()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Manager) path(id, ext string) string { return filepath.Join(m.cfg.Dir, id+"."+ext) }

// update changes job id under the lock, persists it and wakes waiters.
func (m *Manager) update(id string, f func(j *Job)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	f(j)
	m.persist(j)
}

// persist writes j and wakes waiters; m.mu is held.
func (m *Manager) persist(j *Job) {
	if err := writeJSON(m.path(j.ID, "job"), j); err != nil {
		m.log.Error("cannot record training job status", "job", j.ID, "err", err)
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

// prune deletes the oldest finished jobs beyond KeepJobs; m.mu is held.
func (m *Manager) prune() {
	var done []*Job
	for _, j := range m.jobs {
		if finished(j.State) {
			done = append(done, j)
		}
	}
	if len(done) <= m.cfg.KeepJobs {
		return
	}
	slices.SortFunc(done, func(a, b *Job) int { return a.Created.Compare(b.Created) })
	for _, j := range done[:len(done)-m.cfg.KeepJobs] {
		for _, ext := range []string{"job", "ckpt", "model"} {
			if err := os.Remove(m.path(j.ID, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
				m.log.Warn("cannot delete an old training job file", "job", j.ID, "err", err)
			}
		}
		delete(m.jobs, j.ID)
	}
}

func copyJob(j *Job) Job {
	c := *j
	c.History = slices.Clone(j.History)
	c.Resumes = slices.Clone(j.Resumes)
	if j.Data != nil {
		d := *j.Data
		c.Data = &d
	}
	return c
}

// run runs job id to its end (or until ctx ends: Close or Cancel).
func (m *Manager) run(ctx context.Context, id string) {
	err := m.train(ctx, id)
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	m.active, m.cancel = "", nil
	switch {
	case err == nil:
		j.State = StateDone
	case ctx.Err() != nil && m.closed:
		// Closing: the job stays unfinished and resumes at the next Start.
		m.log.Info("training job interrupted; it resumes from its checkpoint", "job", id, "epochs_done", j.EpochsDone)
		close(m.changed)
		m.changed = make(chan struct{})
		return
	case ctx.Err() != nil:
		j.State, j.Error = StateCanceled, "canceled"
	default:
		j.State, j.Error = StateFailed, err.Error()
		m.log.Warn("training job failed", "job", id, "err", err)
	}
	j.Finished = m.clk.Now().UTC()
	m.m.jobs.WithLabelValues(j.State).Inc()
	m.persist(j)
}

// train reads the examples and runs the remaining epochs.
func (m *Manager) train(ctx context.Context, id string) error {
	m.mu.Lock()
	j := copyJob(m.jobs[id])
	m.mu.Unlock()
	spec := j.Spec
	if m.cfg.Defer != nil {
		// A job that started before (resumed after a restart) runs at
		// once; a new one waits for its start when it has a window.
		var latest time.Time
		if j.Started.IsZero() && spec.StartBy.After(m.clk.Now()) {
			latest = spec.StartBy
			m.update(id, func(j *Job) { j.State = StateWaiting })
		}
		done, err := m.cfg.Defer(ctx, id, latest, time.Duration(spec.ExpectedDuration))
		if err != nil {
			return err
		}
		defer done()
	}
	m.update(id, func(j *Job) {
		j.State = StatePreparing
		if j.Started.IsZero() {
			j.Started = m.clk.Now().UTC()
		}
	})
	arch, err := spec.resolve(spec.To, m.cfg.MaxExamples)
	if err != nil {
		return err
	}
	data, err := buildDataset(ctx, m.cfg.Readings, m.cfg.State, &spec)
	if err != nil {
		return err
	}
	m.m.examples.Set(float64(data.info.Kept))
	tc := fedlearn.TrainConfig{
		Solver: fedlearn.Solver(spec.Solver), LearnRate: spec.LearnRate, Momentum: spec.Momentum,
		BatchSize: spec.BatchSize, L2: spec.L2, Mu: spec.Mu, Seed: spec.Seed,
	}
	init := fedlearn.InitWeights(arch, spec.Seed)
	if spec.Base != nil {
		init = weights(spec.Base.Weights).Clone()
		tc.Global = init.Clone()
	}

	var (
		tr      *fedlearn.Trainer
		history []EpochResult
		schema  = data.schema
	)
	var ck checkpoint
	switch err := readJSON(m.path(id, "ckpt"), &ck); {
	case err == nil:
		if tr, err = fedlearn.RestoreTrainer(arch, tc, ck.Trainer); err != nil {
			return fmt.Errorf("training: restoring the checkpoint of epoch %d: %w", ck.Epoch, err)
		}
		history, schema = ck.History, ck.Schema
		if ck.Digest != data.info.Digest {
			data.info.Changed = true
			m.log.Warn("resumed training job reads other examples than it started with", "job", id)
		}
		m.log.Info("training job resumed from its checkpoint", "job", id, "epoch", ck.Epoch)
	case errors.Is(err, os.ErrNotExist):
		if tr, err = fedlearn.NewTrainer(arch, init, tc); err != nil {
			return fmt.Errorf("training: %w", err)
		}
	default:
		return err
	}
	defer tr.Close()
	done := len(history)
	m.update(id, func(j *Job) {
		j.State = StateRunning
		j.Data = &data.info
		j.EpochsDone = done
		j.History = slices.Clone(history)
		if done > 0 {
			j.Resumes = append(j.Resumes, done)
		}
	})
	for e := done + 1; e <= spec.Epochs; e++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		loss, err := tr.Epoch(data.train)
		if err != nil {
			return fmt.Errorf("training: epoch %d: %w", e, err)
		}
		r := EpochResult{Epoch: e, TrainLoss: loss}
		if len(data.held.Y) > 0 {
			if r.HeldOutLoss, r.HeldOutAcc, err = fedlearn.Evaluate(arch, tr.Weights(), data.held); err != nil {
				return fmt.Errorf("training: evaluating epoch %d: %w", e, err)
			}
		}
		r.Seconds = time.Since(start).Seconds()
		history = append(history, r)
		state, err := tr.Checkpoint()
		if err != nil {
			return fmt.Errorf("training: checkpoint of epoch %d: %w", e, err)
		}
		if err := writeJSON(m.path(id, "ckpt"), checkpoint{Epoch: e, History: history, Schema: schema, Digest: data.info.Digest, Trainer: state}); err != nil {
			return err
		}
		m.m.epochs.Inc()
		m.update(id, func(j *Job) {
			j.EpochsDone = e
			j.History = append(j.History, r)
		})
	}
	last := history[len(history)-1]
	md := Model{
		Job: id, Arch: arch, Schema: schema, Labels: spec.Labels, Weights: tensors(tr.Weights()),
		Examples: len(data.train.Y), Epochs: spec.Epochs, HeldOutAcc: last.HeldOutAcc, HeldOutLoss: last.HeldOutLoss,
		Stats: data.stats, Finished: m.clk.Now().UTC(),
	}
	return writeJSON(m.path(id, "model"), md)
}

type metrics struct {
	jobs     *prometheus.CounterVec
	epochs   prometheus.Counter
	examples prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_training_jobs_total",
			Help: "Local training jobs finished, by final state (done, failed, canceled)."}, []string{"state"}),
		epochs: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgefleet_training_epochs_total",
			Help: "Training epochs finished and checkpointed."}),
		examples: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_training_examples",
			Help: "Examples held by the latest training job (after the max_examples cap)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.jobs, m.epochs, m.examples} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("training: metrics: %w", err)
			}
		}
	}
	return m, nil
}

// FeatureStats reads the examples spec selects, as a job would (same
// sample, same split), and returns the per-feature count, sum and sum of
// squares of the raw features of the training split and its size, without
// training: this device's share of normalisation statistics computed
// across devices. It may run beside a job.
func (m *Manager) FeatureStats(ctx context.Context, spec Spec) (fedlearn.FeatureStats, int, error) {
	if _, err := spec.resolve(m.clk.Now().UTC(), m.cfg.MaxExamples); err != nil {
		return fedlearn.FeatureStats{}, 0, err
	}
	data, err := buildDataset(ctx, m.cfg.Readings, m.cfg.State, &spec)
	if err != nil {
		return fedlearn.FeatureStats{}, 0, err
	}
	return data.stats, len(data.train.Y), nil
}
