package controlplane

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
)

// Federated learning: the control plane runs each job's coordinator
// (fedlearn/coord) in a singleton round driver that ticks the running jobs
// with the server's clock, serves the agents their round tasks by long
// poll (GET /v1/agent/fl/task, as the key watch), and receives their
// updates (POST /v1/agent/fl/update): sealed under the telemetry data key
// with cpapi.FLUpdateAAD, signed with the key of the agent's client
// certificate. Every change of a job is written with the coordinator's
// state in one transaction (SaveFL), an accepted update with it: after a
// restart the driver restores each running job from its state and the
// stored updates of its current attempt, so the round resumes and no
// update counts twice.

// errFLKeysSealed: a job's stored updates cannot be opened while the key
// service is sealed.
var errFLKeysSealed = errors.New("controlplane: the key service is sealed")

// flState is the coordinator's share of the server.
type flState struct {
	mu   sync.Mutex
	jobs map[string]*flJob // every job, running or not
	// watch wakes held task requests when a round opens or closes.
	watch *keyWatch
	stop  chan struct{}
	done  chan struct{}
	// wake tells an idle driver that a job was created.
	wake chan struct{}
	// evalData caches prepared evaluation data sets by name and seed.
	evalData map[string]*datasets.Prepared
}

// flJob is one job with its coordinator (nil once finished) and the
// current attempt's traffic.
type flJob struct {
	// rec.Spec is the whole resolved spec, initial weights included, as
	// stored; answers leave the weights out (flPublic).
	rec  cpapi.FLJob
	spec coord.Spec
	// pending is the stored state of a running job not restored yet (the
	// key service was sealed at start).
	pending   []byte
	c         *coord.Coordinator
	bytesUp   int64
	bytesDown int64
	// shortForecast holds the zones whose forecast was seen ending before
	// the job's deadline (warned once each; not kept over a restart).
	shortForecast map[string]bool
}

func newFLState() *flState {
	return &flState{jobs: map[string]*flJob{}, watch: newKeyWatch(), evalData: map[string]*datasets.Prepared{}, wake: make(chan struct{}, 1)}
}

func (s *Server) flRoutes() []route {
	return []route{
		{method: "POST", path: "/v1/fl/jobs", access: accessBearer, role: cpapi.RoleAdmin, action: "fl.job.create", handle: s.handleCreateFLJob},
		{method: "GET", path: "/v1/fl/jobs", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListFLJobs},
		{method: "GET", path: "/v1/fl/jobs/{id}", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleGetFLJob},
		{method: "POST", path: "/v1/fl/jobs/{id}/cancel", access: accessBearer, role: cpapi.RoleAdmin, action: "fl.job.cancel", handle: s.handleCancelFLJob},
		{method: "GET", path: "/v1/fl/jobs/{id}/rounds", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleFLRounds},
		{method: "GET", path: "/v1/agent/fl/task", access: accessAgent, handle: s.handleFLTask},
		{method: "POST", path: "/v1/agent/fl/update", access: accessAgent, handle: s.handleFLUpdate},
	}
}

// ---- the driver ----

// startFL restores the jobs from the store and starts the round driver.
func (s *Server) startFL() error {
	jobs, states, err := s.store.FLJobs(context.Background())
	if err != nil {
		return err
	}
	f := s.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, rec := range jobs {
		j := &flJob{rec: rec}
		if err := json.Unmarshal(rec.Spec, &j.spec); err != nil {
			return fmt.Errorf("controlplane: fl job %s: stored spec: %w", rec.ID, err)
		}
		if p := rec.Privacy; p != nil {
			s.metrics.flEpsilon.WithLabelValues(rec.ID).Set(p.Epsilon)
		}
		if rec.Status == coord.JobRunning {
			if j.c, err = s.restoreFLJob(rec.ID, j.spec, states[i]); errors.Is(err, errFLKeysSealed) {
				// Restored by the driver once the key service is unsealed.
				s.log.Warn("fl job waits for the key service to be unsealed: its round's stored updates are sealed", "job", rec.ID)
				j.pending = states[i]
				f.jobs[rec.ID] = j
				continue
			}
			if err != nil {
				// One broken job does not keep the server down: it is
				// marked failed, with the reason.
				s.log.Error("fl job cannot be restored; marked failed", "job", rec.ID, "err", err)
				j.rec.Status, j.rec.Reason = coord.JobFailed, "not restored after a restart: "+err.Error()
				t := s.cfg.Clock.Now().UTC()
				j.rec.Finished = &t
				if err := s.flSave(context.Background(), j, mustState(j), FLSave{}); err != nil {
					return err
				}
				f.jobs[rec.ID] = j
				continue
			}
			if st := j.c.State(); st.Current != nil {
				rounds, err := s.store.FLRounds(context.Background(), rec.ID)
				if err != nil {
					return err
				}
				for _, r := range rounds {
					if r.Round == st.Current.Round && r.Attempt == st.Current.Attempt {
						j.bytesUp, j.bytesDown = r.BytesUp, r.BytesDown
					}
				}
				s.log.Info("fl job resumed mid-round", "job", rec.ID, "round", st.Current.Round, "attempt", st.Current.Attempt, "reported", len(st.Current.Reported))
			}
		}
		f.jobs[rec.ID] = j
	}
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go s.flLoop(f.stop, f.done)
	return nil
}

func (s *Server) restoreFLJob(id string, spec coord.Spec, state []byte) (*coord.Coordinator, error) {
	var st coord.State
	if err := json.Unmarshal(state, &st); err != nil {
		return nil, fmt.Errorf("controlplane: fl job %s: stored state: %w", id, err)
	}
	var updates []coord.Submission
	if st.Current != nil {
		stored, err := s.store.FLUpdates(context.Background(), id, st.Current.Round, st.Current.Attempt)
		if err != nil {
			return nil, err
		}
		if len(stored) > 0 && s.keys.svc.Status().Sealed {
			return nil, errFLKeysSealed
		}
		ctx := dkms.WithActor(context.Background(), "fl:"+id)
		for _, su := range stored {
			pt, err := s.keys.svc.Decrypt(ctx, cpapi.TelemetryKeyName, su.Envelope, cpapi.FLUpdateAAD(su.Agent, id, su.Round, su.Attempt))
			if err != nil {
				return nil, fmt.Errorf("controlplane: fl job %s: opening the stored update of %s: %w", id, su.Agent, err)
			}
			u, err := cpapi.DecodeFLUpdate(pt)
			clear(pt)
			if err != nil {
				return nil, fmt.Errorf("controlplane: fl job %s: stored update of %s: %w", id, su.Agent, err)
			}
			updates = append(updates, coord.Submission{Agent: su.Agent, Round: u.Round, Attempt: u.Attempt, Delta: u.Delta, Examples: u.Examples, Stats: u.Stats})
		}
	}
	c, err := coord.RestoreSubmissions(spec, st, updates)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return c, nil
}

// stopFL stops the round driver and waits for it.
func (s *Server) stopFL() {
	f := s.fl
	if f.stop == nil {
		return
	}
	close(f.stop)
	<-f.done
	f.watch.close()
}

// flLoop ticks the running jobs every FL.Tick on the server's clock. With
// no running job it waits on nothing but f.wake (a job created), so an idle
// coordinator holds no timer.
func (s *Server) flLoop(stop, done chan struct{}) {
	defer close(done)
	for {
		if !s.flRunning() {
			select {
			case <-stop:
				return
			case <-s.fl.wake:
			}
			continue
		}
		t := s.cfg.Clock.NewTimer(s.cfg.FL.Tick)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C():
			s.flTick(context.Background())
		}
	}
}

// flRunning reports whether a job is running.
func (s *Server) flRunning() bool {
	s.fl.mu.Lock()
	defer s.fl.mu.Unlock()
	for _, j := range s.fl.jobs {
		if j.c != nil || j.pending != nil {
			return true
		}
	}
	return false
}

// FLTick ticks every running job once at the server's clock; the driver
// calls it every FL.Tick, and tests with a manual clock may call it.
func (s *Server) FLTick() { s.flTick(context.Background()) }

func (s *Server) flTick(ctx context.Context) {
	f := s.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	var agents []cpapi.Agent
	for _, j := range f.jobs {
		if j.pending != nil && !s.keys.svc.Status().Sealed {
			c, err := s.restoreFLJob(j.rec.ID, j.spec, j.pending)
			if err != nil {
				s.log.Error("fl job cannot be restored", "job", j.rec.ID, "err", err)
				continue
			}
			j.c, j.pending = c, nil
			s.log.Info("fl job restored after the unseal", "job", j.rec.ID)
		}
		if j.c == nil {
			continue
		}
		if agents == nil {
			var err error
			if agents, err = s.store.ListAgents(ctx); err != nil {
				s.log.Warn("fl driver: listing agents", "err", err)
				return
			}
		}
		now := s.cfg.Clock.Now()
		avail, err := s.flAvailable(j.spec, agents, now)
		if err != nil {
			s.log.Warn("fl driver", "job", j.rec.ID, "err", err)
			continue
		}
		if j.spec.Carbon != nil {
			avail = s.flCarbon(ctx, j, agents, avail, now)
		}
		if ev := j.c.Tick(now, avail); len(ev) > 0 {
			s.flApply(ctx, j, now, ev, nil, nil)
		}
	}
}

// flAvailable lists the online agents whose labels match the job's
// selector: the clients a round may select (the eligibility hook of
// scheduling goes here).
func (s *Server) flAvailable(spec coord.Spec, agents []cpapi.Agent, now time.Time) ([]string, error) {
	var sel map[string]string
	if spec.Selector != "" {
		var err error
		if sel, err = cpapi.ParseSelector(spec.Selector); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, a := range agents {
		if s.stateOf(a, now) != cpapi.StateOnline {
			continue
		}
		if sel != nil && !cpapi.SelectorMatches(sel, a.Labels) {
			continue
		}
		out = append(out, a.ID)
	}
	return out, nil
}

// flRoundRecord is the record of an attempt with the job's traffic.
func flRoundRecord(j *flJob, r coord.Round) cpapi.FLRound {
	kind := r.Kind
	if kind == "" {
		kind = coord.RoundTrain
	}
	out := cpapi.FLRound{Job: j.rec.ID, Round: r.Round, Attempt: r.Attempt, Kind: kind, Phase: r.Phase, Opened: r.Opened.UTC(),
		Selected: r.Selected, Participants: len(r.Reported), Failures: r.Failures(), Refused: r.Refused,
		Examples: r.Examples, Reason: r.Reason, BytesUp: j.bytesUp, BytesDown: j.bytesDown, Q: r.Q}
	if d := j.spec.DP; d != nil && !r.Stats() && !r.Closed.IsZero() {
		out.Epsilon, out.Delta = r.Epsilon, d.Delta
	}
	out.SecAgg = flSecAggState(r.SecAgg)
	if !r.Closed.IsZero() {
		t := r.Closed.UTC()
		out.Closed = &t
		out.Seconds = r.Closed.Sub(r.Opened).Seconds()
	}
	return out
}

// flApply persists what the events say happened, with upd (an accepted
// update) and audit in the same transaction, evaluates aggregated models,
// publishes a finished job's model, and wakes the task watchers. f.mu is
// held. On a store failure the job is restored from the store, so the
// memory never runs ahead of the disk.
func (s *Server) flApply(ctx context.Context, j *flJob, now time.Time, ev []coord.Event, upd *FLStoredUpdate, audit *AuditEntry) error {
	save := FLSave{Update: upd, Audit: audit, Globals: map[int][]float64{}}
	wake := false
	finished := ""
	for _, e := range ev {
		switch e.Kind {
		case coord.EvRoundOpened:
			j.bytesUp, j.bytesDown = 0, 0
			save.Rounds = append(save.Rounds, flRoundRecord(j, e.Round))
			wake = true
			s.log.Info("fl round opened", "job", j.rec.ID, "round", e.Round.Round, "attempt", e.Round.Attempt, "clients", len(e.Round.Selected))
		case coord.EvRoundAggregated:
			r := flRoundRecord(j, e.Round)
			s.flEvaluate(j, j.c.Schema(), e.Global, &r)
			save.Rounds = append(save.Rounds, r)
			save.Globals[r.Round] = e.Global
			wake = true
			s.log.Info("fl round aggregated", "job", j.rec.ID, "round", r.Round, "participants", r.Participants, "failures", r.Failures, "accuracy", r.Accuracy, "epsilon", r.Epsilon)
		case coord.EvStatsAggregated:
			save.Rounds = append(save.Rounds, flRoundRecord(j, e.Round))
			wake = true
			s.log.Info("fl statistics round aggregated: the schema is normalised", "job", j.rec.ID, "participants", len(e.Round.Reported), "examples", e.Round.Examples)
		case coord.EvSecAggStage:
			save.Rounds = append(save.Rounds, flRoundRecord(j, e.Round))
			wake = true
			s.log.Info("fl secure aggregation: next stage", "job", j.rec.ID, "round", e.Round.Round, "attempt", e.Round.Attempt, "stage", e.Round.SecAgg.Stage)
		case coord.EvRoundFailed:
			save.Rounds = append(save.Rounds, flRoundRecord(j, e.Round))
			wake = true
			s.log.Warn("fl round failed", "job", j.rec.ID, "round", e.Round.Round, "attempt", e.Round.Attempt, "reason", e.Reason, "retried", e.Retry)
		case coord.EvJobFinished:
			finished = e.Status
		}
	}
	st := j.c.State()
	if st.Current != nil && len(ev) > 0 && ev[0].Kind == coord.EvUpdateAccepted {
		// The attempt's record follows its updates (participants, bytes
		// up), so a restart resumes its traffic counts.
		save.Rounds = append(save.Rounds, flRoundRecord(j, *st.Current))
	}
	j.rec.Status, j.rec.Reason, j.rec.Done, j.rec.Current = st.Status, st.Reason, st.Done, flRoundState(st.Current)
	j.rec.Schema = st.Schema
	if d := j.spec.DP; d != nil {
		p := &cpapi.FLPrivacy{Mode: d.Mode, Delta: d.Delta, Budget: d.Budget}
		if st.Privacy != nil {
			p.Epsilon, p.Rounds = st.Privacy.Spent.Epsilon, len(st.Privacy.Q)
		}
		j.rec.Privacy = p
		s.metrics.flEpsilon.WithLabelValues(j.rec.ID).Set(p.Epsilon)
	}
	if finished != "" {
		t := now.UTC()
		j.rec.Finished = &t
	}
	if err := s.flSave(ctx, j, st, save); err != nil {
		return err
	}
	if finished == coord.JobDone {
		if err := s.flPublish(ctx, j, st.Global, j.c.Schema()); err != nil {
			s.log.Warn("fl job finished; its model is not in the registry yet (tried again at the next start)", "job", j.rec.ID, "err", err)
		}
	}
	if finished != "" {
		j.c = nil
		s.log.Info("fl job finished", "job", j.rec.ID, "status", finished, "reason", j.rec.Reason)
	}
	if wake {
		s.fl.watch.notify()
	}
	return nil
}

func (s *Server) flSave(ctx context.Context, j *flJob, st coord.State, save FLSave) error {
	state, err := json.Marshal(st)
	if err == nil {
		save.Job, save.State = j.rec, state
		err = s.store.SaveFL(ctx, save)
	}
	if err != nil {
		s.log.Error("fl job change not saved; the job is restored from the store", "job", j.rec.ID, "err", err)
		s.flReload(ctx, j)
		return err
	}
	return nil
}

// flReload restores a job from the store after a failed save.
func (s *Server) flReload(ctx context.Context, j *flJob) {
	// Not the request's context: a client gone away must not leave the
	// memory ahead of the disk.
	jobs, states, err := s.store.FLJobs(context.WithoutCancel(ctx))
	if err != nil {
		s.log.Error("fl job not restored from the store after a failed save", "job", j.rec.ID, "err", err)
		return
	}
	for i, rec := range jobs {
		if rec.ID == j.rec.ID {
			j.rec = rec
			j.c = nil
			if rec.Status == coord.JobRunning {
				if j.c, err = s.restoreFLJob(rec.ID, j.spec, states[i]); err != nil {
					s.log.Error("fl job cannot be restored", "job", rec.ID, "err", err)
				}
			}
		}
	}
}

// flEvaluate fills the round's accuracy and loss on the job's evaluation
// set, when it names one and the data are there; schema is the job's (with
// its federated normalisation).
func (s *Server) flEvaluate(j *flJob, schema fedlearn.Schema, global []float64, r *cpapi.FLRound) {
	ev := j.spec.Evaluation
	if ev == nil {
		return
	}
	key := ev.Dataset + "/" + strconv.FormatUint(ev.Seed, 10)
	p := s.fl.evalData[key]
	if p == nil {
		var err error
		if p, err = datasets.Load(s.cfg.FL.DataDir, ev.Dataset, ev.Seed); err != nil {
			s.log.Warn("fl evaluation set not loaded; rounds are not evaluated", "job", j.rec.ID, "dir", s.cfg.FL.DataDir, "err", err)
			return
		}
		s.fl.evalData[key] = p
	}
	spec := j.spec
	w := fedlearn.NewWeights(spec.Arch)
	if err := w.SetFlat(global); err != nil {
		s.log.Warn("fl evaluation", "job", j.rec.ID, "err", err)
		return
	}
	r.Accuracy, r.Loss = map[string]float64{}, map[string]float64{}
	for i, raw := range p.RawTests {
		name := p.Tests[i].Name
		if ev.Split != "" && ev.Split != name {
			continue
		}
		// Normalised by the job's schema, as the agents normalise.
		part, err := raw.Normalize(name, schema)
		if err != nil {
			s.log.Warn("fl evaluation", "job", j.rec.ID, "split", name, "err", err)
			continue
		}
		loss, acc, err := fedlearn.Evaluate(spec.Arch, w, fedlearn.Examples{X: part.X, Y: part.Y, Inputs: part.Inputs})
		if err != nil {
			s.log.Warn("fl evaluation", "job", j.rec.ID, "split", name, "err", err)
			continue
		}
		r.Accuracy[name], r.Loss[name] = acc, loss
	}
}

// flModelVersion is the registry version of a job's model.
func flModelVersion(job string) string { return job }

// flPublish stores the finished job's global model in the registry,
// signed as a pushed model is, with the job's schema (normalised by its
// statistics round, if it had one).
func (s *Server) flPublish(ctx context.Context, j *flJob, global []float64, schema fedlearn.Schema) error {
	spec := j.spec
	w := fedlearn.NewWeights(spec.Arch)
	if err := w.SetFlat(global); err != nil {
		return err
	}
	created := j.rec.Created
	if j.rec.Finished != nil {
		created = *j.rec.Finished
	}
	f := &fedlearn.File{Name: spec.Model, Version: flModelVersion(j.rec.ID), Arch: spec.Arch, Weights: w, Schema: schema, Labels: spec.Labels,
		Training: fedlearn.Training{Dataset: "federated:" + j.rec.ID, From: spec.From, To: spec.To, Epochs: spec.Epochs * spec.Rounds, Seed: spec.Seed,
			Params: map[string]string{"strategy": spec.Strategy.Name, "rounds": strconv.Itoa(spec.Rounds), "solver": spec.Solver,
				"learn_rate": strconv.FormatFloat(spec.LearnRate, 'g', -1, 64)},
			Created: created.UTC()}}
	if spec.FederatedStats != nil && *spec.FederatedStats {
		f.Training.Params["normalize"] = "federated"
	}
	if p := j.rec.Privacy; p != nil {
		f.Training.Params["dp"] = p.Mode
		f.Training.Params["epsilon"] = strconv.FormatFloat(p.Epsilon, 'g', 6, 64)
		f.Training.Params["delta"] = strconv.FormatFloat(p.Delta, 'g', -1, 64)
	}
	b, err := f.Encode()
	if err != nil {
		return err
	}
	signer := s.modelSignerID()
	signed, err := fedlearn.Sign(b, signer, s.keys.signer)
	if err != nil {
		return err
	}
	dec, err := fedlearn.Decode(signed)
	if err != nil {
		return err
	}
	m := modelInfo(dec, len(signed), signer)
	m.PushedAt, m.PushedBy = s.cfg.Clock.Now().UTC(), "fl:"+j.rec.ID
	if _, err := s.store.PutModel(ctx, m, signed, AuditEntry{Time: m.PushedAt, Actor: m.PushedBy, Action: "model.push", Target: m.Name + "@" + m.Version, Result: "ok"}); err != nil {
		return err
	}
	j.rec.ModelVersion = m.Version
	s.log.Info("fl job's model stored in the registry", "job", j.rec.ID, "model", m.Name, "version", m.Version, "digest", m.Digest)
	return s.flSave(ctx, j, mustState(j), FLSave{})
}

// mustState is the state to save with a job's description: its
// coordinator's, or the stored one's fields for a finished job.
func mustState(j *flJob) coord.State {
	if j.c != nil {
		return j.c.State()
	}
	return coord.State{Job: j.rec.ID, Status: j.rec.Status, Reason: j.rec.Reason, Done: j.rec.Done}
}

// ---- operator API ----

func newFLJobID(rnd io.Reader) (string, error) {
	var b [6]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("controlplane: fl job id: %w", err)
	}
	return "flj-" + hex.EncodeToString(b[:]), nil
}

func (s *Server) handleCreateFLJob(w http.ResponseWriter, r *http.Request, c *call) error {
	var spec coord.Spec
	if err := s.decodeFLSpec(w, r, &spec); err != nil {
		return err
	}
	id, err := newFLJobID(s.cfg.Rand)
	if err != nil {
		return err
	}
	c.target = id
	co, err := coord.New(id, spec)
	if err != nil {
		return badRequest("%s", strings.TrimPrefix(err.Error(), coord.ErrSpec.Error()+": "))
	}
	if spec.DP != nil || spec.SecAgg != nil {
		// The central noise's seed (and secure aggregation's ring of
		// neighbours) gets a secret beside the spec's seed, which every
		// viewer of the job can read.
		key := make([]byte, 32)
		if _, err := io.ReadFull(s.cfg.Rand, key); err != nil {
			return fmt.Errorf("controlplane: fl job noise key: %w", err)
		}
		if err := co.SetNoiseKey(key); err != nil {
			return err
		}
	}
	if spec.Selector != "" {
		if _, err := parseModelSelector(spec.Selector); err != nil {
			return err
		}
	}
	full, err := json.Marshal(co.Spec())
	if err != nil {
		return err
	}
	j := &flJob{c: co, spec: co.Spec(), rec: cpapi.FLJob{ID: id, Spec: full, Status: coord.JobRunning, Created: c.now.UTC(), Creator: c.actor}}
	if d := j.spec.DP; d != nil {
		j.rec.Privacy = &cpapi.FLPrivacy{Mode: d.Mode, Delta: d.Delta, Budget: d.Budget}
	}
	st := co.State()
	state, err := json.Marshal(st)
	if err != nil {
		return err
	}
	e := c.entry()
	if err := s.store.SaveFL(r.Context(), FLSave{Job: j.rec, State: state, Create: true, Audit: &e}); err != nil {
		return err
	}
	rec := flPublic(j.rec) // the driver owns j once it is in the map
	s.fl.mu.Lock()
	s.fl.jobs[id] = j
	s.fl.mu.Unlock()
	select {
	case s.fl.wake <- struct{}{}:
	default:
	}
	s.log.Info("fl job created", "job", id, "model", spec.Model, "strategy", spec.Strategy.Name, "rounds", j.spec.Rounds, "by", c.actor)
	writeJSON(w, http.StatusCreated, rec)
	return nil
}

// decodeFLSpec reads a job spec; its weights make it larger than other
// JSON bodies, so it has the update limit.
func (s *Server) decodeFLSpec(w http.ResponseWriter, r *http.Request, v *coord.Spec) error {
	if err := checkJSONContentType(r); err != nil {
		return err
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.cfg.FL.MaxUpdateBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonBodyError(err)
	}
	return nil
}

func (s *Server) handleListFLJobs(w http.ResponseWriter, r *http.Request, c *call) error {
	if len(r.URL.Query()) > 0 {
		return badRequest("GET /v1/fl/jobs takes no query parameters")
	}
	jobs, _, err := s.store.FLJobs(r.Context())
	if err != nil {
		return err
	}
	for i := range jobs {
		jobs[i] = flPublic(jobs[i])
	}
	writeJSON(w, http.StatusOK, cpapi.FLJobsResponse{Jobs: jobs})
	return nil
}

// flJobRecord returns a job's current description.
func (s *Server) flJobRecord(id string, c *call) (cpapi.FLJob, error) {
	c.target = id
	s.fl.mu.Lock()
	defer s.fl.mu.Unlock()
	j, ok := s.fl.jobs[id]
	if !ok {
		return cpapi.FLJob{}, errorf(http.StatusNotFound, "fl job %s not found", id)
	}
	return flPublic(j.rec), nil
}

func (s *Server) handleGetFLJob(w http.ResponseWriter, r *http.Request, c *call) error {
	j, err := s.flJobRecord(r.PathValue("id"), c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) handleFLRounds(w http.ResponseWriter, r *http.Request, c *call) error {
	j, err := s.flJobRecord(r.PathValue("id"), c)
	if err != nil {
		return err
	}
	rounds, err := s.store.FLRounds(r.Context(), j.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.FLRoundsResponse{Job: j, Rounds: rounds})
	return nil
}

func (s *Server) handleCancelFLJob(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	var req cpapi.FLCancelRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	reason := "canceled by " + c.actor
	if req.Reason != "" {
		reason += ": " + req.Reason
	}
	f := s.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return errorf(http.StatusNotFound, "fl job %s not found", id)
	}
	if j.pending != nil {
		return s.sealedError()
	}
	if j.c == nil {
		return errorf(http.StatusConflict, "fl job %s is %s already", id, j.rec.Status)
	}
	e := c.entry()
	if err := s.flApply(r.Context(), j, c.now, j.c.Cancel(c.now, reason), nil, &e); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, flPublic(j.rec))
	return nil
}

// flPublic is a job's description as answered: its spec without the
// initial weights, which can be large.
func flPublic(rec cpapi.FLJob) cpapi.FLJob {
	var m map[string]json.RawMessage
	if json.Unmarshal(rec.Spec, &m) == nil {
		delete(m, "initial")
		if b, err := json.Marshal(m); err == nil {
			rec.Spec = b
		}
	}
	return rec
}

// flSecAggState converts a round's secure-aggregation progress.
func flSecAggState(sa *coord.SecAggState) *cpapi.FLSecAggState {
	if sa == nil {
		return nil
	}
	return &cpapi.FLSecAggState{Stage: sa.Stage, StageDeadline: sa.StageDeadline.UTC(), Keys: sa.Keys, Shares: sa.Shares, Vectors: sa.Vectors, Unmasked: sa.Unmasked, Dropped: sa.Dropped}
}

// flRoundState converts the coordinator's round for the API.
func flRoundState(r *coord.Round) *cpapi.FLRoundState {
	if r == nil {
		return nil
	}
	return &cpapi.FLRoundState{Round: r.Round, Attempt: r.Attempt, Kind: r.Kind, Phase: r.Phase, Opened: r.Opened.UTC(), Deadline: r.Deadline.UTC(),
		Selected: r.Selected, Reported: r.Reported, Examples: r.Examples, Refused: r.Refused, SecAgg: flSecAggState(r.SecAgg)}
}

// ---- agent API ----

var flTaskParams = []string{"after", "wait"}

// flTaskFor returns the calling agent's task, if a running job selected it
// in the current attempt and it has not reported: the oldest such job.
func (s *Server) flTaskFor(agent string) (*cpapi.FLTask, *flJob) {
	f := s.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	var best *flJob
	var round coord.Round
	for _, j := range f.jobs {
		if j.c == nil {
			continue
		}
		r, ok := j.c.Selected(agent)
		if !ok {
			continue
		}
		if best == nil || j.rec.Created.Before(best.rec.Created) || (j.rec.Created.Equal(best.rec.Created) && j.rec.ID < best.rec.ID) {
			best, round = j, r
		}
	}
	if best == nil {
		return nil, nil
	}
	sp := best.c.Spec()
	st := best.c.State()
	t := &cpapi.FLTask{Job: best.rec.ID, Round: round.Round, Attempt: round.Attempt, Kind: cpapi.FLTaskTrain, Deadline: round.Deadline.UTC(),
		Arch: sp.Arch, Schema: best.c.Schema(), Labels: sp.Labels, Global: st.Global, From: sp.From, To: sp.To,
		Epochs: sp.Epochs, BatchSize: sp.BatchSize, LearnRate: sp.LearnRate, Solver: sp.Solver, Mu: sp.Mu,
		Seed: sp.Seed ^ uint64(round.Round)<<32 ^ uint64(round.Attempt)}
	if round.Stats() {
		t.Kind = cpapi.FLTaskStats
	} else if d := sp.DP; d != nil && d.Mode == coord.DPLocal {
		t.DP = &cpapi.FLTaskDP{Clip: d.Clip, NoiseMultiplier: d.NoiseMultiplier}
	}
	if round.SecAgg != nil {
		sa, ok := best.c.SecAggTask(agent)
		if !ok {
			return nil, nil
		}
		t.SecAgg = &cpapi.FLTaskSecAgg{Stage: sa.Stage, Message: sa.Message, MaxWeight: sa.MaxWeight}
		// The answer is due by the stage's deadline (the unmask stage's
		// lies after the round's when the collect stage ran to it).
		t.Deadline = round.SecAgg.StageDeadline.UTC()
		if !t.Trains() {
			// Only the collect stage trains: the others carry no model.
			t.Global, t.Arch, t.Schema, t.Labels = nil, fedlearn.Arch{}, fedlearn.Schema{}, nil
		}
	}
	return t, best
}

func flCursor(t *cpapi.FLTask) string {
	if t == nil {
		return ""
	}
	return t.Step()
}

// handleFLTask answers the calling agent's round task. With "after" equal
// to the current cursor and a "wait", the request is held until the task
// changes (a round opens or closes) or the wait ends.
func (s *Server) handleFLTask(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, flTaskParams...); err != nil {
		return err
	}
	after := q.Get("after")
	wait, err := parseKeyWait(q.Get("wait"))
	if err != nil {
		return err
	}
	var task *cpapi.FLTask
	var j *flJob
	var cur string
	answer, err := s.longPoll(w, r, s.fl.watch, wait, "fl task", c.agentID, func() (bool, error) {
		task, j = s.flTaskFor(c.agentID)
		cur = flCursor(task)
		return after != cur, nil
	})
	if !answer {
		return err
	}
	return s.writeFLTask(w, r, task, j, cur)
}

// flGzipMin is the smallest task answer sent gzip-compressed to an agent
// that accepts it (a task with the global model: tens of KB of JSON
// numbers, about half as much compressed; Go's HTTP client asks for gzip
// and decompresses by itself).
const flGzipMin = 1024

// writeFLTask answers a task request; the job's bytes down count the
// body as sent.
func (s *Server) writeFLTask(w http.ResponseWriter, r *http.Request, task *cpapi.FLTask, j *flJob, cur string) error {
	b, err := json.Marshal(cpapi.FLTaskResponse{Task: task, Cursor: cur})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Add("Vary", "Accept-Encoding")
	if len(b) >= flGzipMin && acceptsGzip(r.Header.Values("Accept-Encoding")) {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed) // a valid level: no error
		zw.Write(b)
		if err := zw.Close(); err != nil {
			return err
		}
		b = buf.Bytes()
		w.Header().Set("Content-Encoding", "gzip")
	}
	if j != nil {
		s.fl.mu.Lock()
		j.bytesDown += int64(len(b))
		s.fl.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	return nil
}

// acceptsGzip reports whether Accept-Encoding values name gzip without
// q=0 (a wildcard is not taken for it).
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			if coding, q := codingQ(part); strings.EqualFold(coding, "gzip") && q > 0 {
				return true
			}
		}
	}
	return false
}

// codingQ reads one element of Accept-Encoding, "coding[;q=V]", and
// its weight (1 unless a q parameter says otherwise).
func codingQ(part string) (coding string, q float64) {
	coding, params, _ := strings.Cut(part, ";")
	q = 1
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			q = f
		}
	}
	return strings.TrimSpace(coding), q
}

// parseFLTaskHeader reads "job/round/attempt".
func parseFLTaskHeader(v string) (job string, round, attempt int, err error) {
	parts := strings.Split(v, "/")
	if len(parts) != 3 || parts[0] == "" {
		return "", 0, 0, badRequest("header %s: %q, want job/round/attempt", cpapi.HeaderFLTask, v)
	}
	round, err1 := strconv.Atoi(parts[1])
	attempt, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || round < 0 || attempt < 0 {
		return "", 0, 0, badRequest("header %s: %q, want job/round/attempt", cpapi.HeaderFLTask, v)
	}
	return parts[0], round, attempt, nil
}

// verifyFLSignature checks sig over SHA-256 of env with the public key of
// the client certificate the request came with.
func verifyFLSignature(r *http.Request, env []byte, sigText string) error {
	if sigText == "" {
		return errors.New("no signature (header " + cpapi.HeaderFLSignature + ")")
	}
	sig, err := base64.StdEncoding.DecodeString(sigText)
	if err != nil {
		return fmt.Errorf("signature is not base64: %v", err)
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return errors.New("no client certificate to verify the signature with")
	}
	d := sha256.Sum256(env)
	switch pub := r.TLS.PeerCertificates[0].PublicKey.(type) {
	case *ecdsa.PublicKey:
		if ecdsa.VerifyASN1(pub, d[:], sig) {
			return nil
		}
	case ed25519.PublicKey:
		if ed25519.Verify(pub, d[:], sig) {
			return nil
		}
	default:
		return fmt.Errorf("client certificate key %T cannot verify signatures", pub)
	}
	return errors.New("signature does not verify with the agent's certificate key")
}

// handleFLUpdate receives a sealed, signed update. A refused update is
// counted against its round with a reason and answered 4xx naming it;
// the round goes on. Once its body is in, an update is handled whether
// or not the client stays: with the request's context a client killed
// while its update waited for the job's lock left the update aggregated
// from memory, unsaved and uncounted, and one killed during the key
// service's decryption had its update refused as unsealed.
func (s *Server) handleFLUpdate(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx := context.WithoutCancel(r.Context())
	jobID, round, attempt, err := parseFLTaskHeader(r.Header.Get(cpapi.HeaderFLTask))
	if err != nil {
		return err
	}
	c.target = jobID
	f := s.fl
	f.mu.Lock()
	j, ok := f.jobs[jobID]
	f.mu.Unlock()
	if !ok {
		return errorf(http.StatusNotFound, "fl job %s not found", jobID)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.FL.MaxUpdateBytes))
	if err != nil {
		return badRequest("reading the update: %v", err)
	}
	refuse := func(status int, kind, why string) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if j.c != nil {
			j.c.Refuse(c.agentID, kind)
			s.flApply(ctx, j, c.now, nil, nil, nil)
		}
		s.metrics.flUpdates.WithLabelValues(kind).Inc()
		s.log.Warn("fl update refused", "job", jobID, "agent", c.agentID, "round", round, "reason", kind, "detail", why)
		return errorf(status, "fl update refused: %s: %s", kind, why)
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != cpapi.EnvelopeContentType {
		return refuse(http.StatusUnsupportedMediaType, coord.RefusedUnsealed, fmt.Sprintf("Content-Type %q, want %s (an update sealed under %q)", r.Header.Get("Content-Type"), cpapi.EnvelopeContentType, cpapi.TelemetryKeyName))
	}
	if err := verifyFLSignature(r, body, r.Header.Get(cpapi.HeaderFLSignature)); err != nil {
		return refuse(http.StatusBadRequest, coord.RefusedUnsigned, err.Error())
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	pt, err := s.keys.svc.Decrypt(keyCtx(ctx, c), cpapi.TelemetryKeyName, body, cpapi.FLUpdateAAD(c.agentID, jobID, round, attempt))
	if err != nil {
		return refuse(http.StatusBadRequest, coord.RefusedUnsealed, "the envelope does not open for this agent, job, round and attempt: "+cleanKeyError(err.Error()))
	}
	u, err := cpapi.DecodeFLUpdate(pt)
	clear(pt)
	if err != nil {
		return refuse(http.StatusBadRequest, coord.RefusedInvalid, strings.TrimPrefix(err.Error(), cpapi.ErrBadRequest.Error()+": "))
	}
	if u.Job != jobID || u.Round != round || u.Attempt != attempt {
		return refuse(http.StatusBadRequest, coord.RefusedInvalid, fmt.Sprintf("sealed for %s/%d/%d, carries %s/%d/%d", jobID, round, attempt, u.Job, u.Round, u.Attempt))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if j.pending != nil {
		return s.sealedError()
	}
	if j.c == nil {
		s.metrics.flUpdates.WithLabelValues(coord.RefusedClosed).Inc()
		return errorf(http.StatusConflict, "fl update refused: %s: job %s is %s", coord.RefusedClosed, jobID, j.rec.Status)
	}
	ev := j.c.Offer(c.now, coord.Submission{Agent: c.agentID, Round: u.Round, Attempt: u.Attempt, Delta: u.Delta, Examples: u.Examples, Stats: u.Stats, SecAgg: u.SecAgg})
	if ev[0].Kind == coord.EvUpdateRefused {
		s.flApply(ctx, j, c.now, nil, nil, nil)
		s.metrics.flUpdates.WithLabelValues(strings.SplitN(ev[0].Reason, ":", 2)[0]).Inc()
		s.log.Warn("fl update refused", "job", jobID, "agent", c.agentID, "round", round, "reason", ev[0].Reason)
		status := http.StatusConflict
		if strings.HasPrefix(ev[0].Reason, coord.RefusedInvalid) {
			status = http.StatusBadRequest
		}
		return errorf(status, "fl update refused: %s", ev[0].Reason)
	}
	j.bytesUp += int64(len(body))
	var stored *FLStoredUpdate
	if u.SecAgg == nil {
		// A secure-aggregation answer is not stored: the round's key
		// material is in memory only, and a restart re-runs the round.
		stored = &FLStoredUpdate{Round: u.Round, Attempt: u.Attempt, Agent: c.agentID, Examples: u.Examples, Envelope: body, ReceivedAt: nanos(c.now)}
	}
	if err := s.flApply(ctx, j, c.now, ev, stored, nil); err != nil {
		return err
	}
	// A secure-aggregation round's update is the masked vector; its other
	// stages' answers are counted apart.
	if u.SecAgg == nil || secagg.IsMaskedVector(u.SecAgg) {
		s.metrics.flUpdates.WithLabelValues("accepted").Inc()
	} else {
		s.metrics.flUpdates.WithLabelValues("accepted_secagg_stage").Inc()
	}
	writeJSON(w, http.StatusOK, cpapi.FLUpdateResult{Accepted: true})
	return nil
}
