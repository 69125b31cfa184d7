package localapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// Training is the local training side.
type Training interface {
	// Training is the job manager; an error (one of Config.Unavailable)
	// when the agent is not running or training is disabled.
	Training() (*training.Manager, error)
}

// MaxTrainingSpecBytes bounds the body of POST /v1/training/jobs (a spec
// with a base model's weights as JSON).
const MaxTrainingSpecBytes = 64 << 20

func (s *server) routeTraining(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/training/jobs", s.handleTrainingCreate)
	mux.HandleFunc("GET /v1/training/jobs", s.handleTrainingList)
	mux.HandleFunc("GET /v1/training/jobs/{id}", s.handleTrainingGet)
	mux.HandleFunc("DELETE /v1/training/jobs/{id}", s.handleTrainingCancel)
	mux.HandleFunc("GET /v1/training/jobs/{id}/model", s.handleTrainingModel)
}

// trainingAllow are the methods of the training routes.
var trainingAllow = map[string]string{
	"/v1/training/jobs":            "GET, POST",
	"/v1/training/jobs/{id}":       "GET, DELETE",
	"/v1/training/jobs/{id}/model": "GET",
}

func (s *server) manager(w http.ResponseWriter) (*training.Manager, bool) {
	m, err := s.b.Training()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil, false
	}
	return m, true
}

func (s *server) handleTrainingCreate(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxTrainingSpecBytes)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("agent: training job spec exceeds %d bytes", MaxTrainingSpecBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "agent: reading the training job spec: "+err.Error())
		return
	}
	spec, err := decodeSpec(buf.Bytes())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m, ok := s.manager(w)
	if !ok {
		return
	}
	j, err := m.Submit(spec)
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, wireJob(j))
	case errors.Is(err, training.ErrInvalidSpec):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, training.ErrBusy):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, training.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// specFields are the JSON names of training.Spec's fields.
var specFields = func() map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeFor[training.Spec]()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		out[name] = true
	}
	return out
}()

// decodeSpec decodes a job spec strictly; an error names the field: each
// top-level field is decoded on its own first, so that a bad value (a
// duration, a time, a number) is reported with its field's name.
func decodeSpec(body []byte) (training.Spec, error) {
	var spec training.Spec
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return spec, fmt.Errorf("agent: training job spec: want a JSON object: %v", err)
	}
	for name, raw := range fields {
		if !specFields[name] {
			return spec, fmt.Errorf("training: invalid job spec: %s: unknown field", name)
		}
		one, _ := json.Marshal(map[string]json.RawMessage{name: raw})
		var scratch training.Spec
		dec := json.NewDecoder(bytes.NewReader(one))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&scratch); err != nil {
			return spec, fmt.Errorf("training: invalid job spec: %s: %v", name, strings.TrimPrefix(err.Error(), "json: "))
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("training: invalid job spec: %v", err)
	}
	return spec, nil
}

func (s *server) handleTrainingList(w http.ResponseWriter, r *http.Request) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	jobs := m.Jobs()
	out := agentapi.TrainingJobList{Jobs: make([]agentapi.TrainingJob, 0, len(jobs))}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, wireJob(j))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleTrainingGet(w http.ResponseWriter, r *http.Request) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	j, err := m.Job(r.PathValue("id"))
	s.writeJob(w, j, err)
}

func (s *server) handleTrainingCancel(w http.ResponseWriter, r *http.Request) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	j, err := m.Cancel(r.PathValue("id"))
	s.writeJob(w, j, err)
}

func (s *server) writeJob(w http.ResponseWriter, j training.Job, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, wireJob(j))
	case errors.Is(err, training.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *server) handleTrainingModel(w http.ResponseWriter, r *http.Request) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	q := r.URL.Query()
	switch q.Get("format") {
	case "", "json":
	case "file":
		s.handleTrainingModelFile(w, r, m)
		return
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("localapi: format %q: want json (default) or file", q.Get("format")))
		return
	}
	md, err := m.Model(r.PathValue("id"))
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, wireTrainedModel(md))
	case errors.Is(err, training.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, training.ErrNotDone):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// handleTrainingModelFile answers ?format=file: the job's model as a
// model file (fedlearn's format, unsigned), named by ?name and ?version
// (defaults training.DefaultFileName and "1").
func (s *server) handleTrainingModelFile(w http.ResponseWriter, r *http.Request, m *training.Manager) {
	q := r.URL.Query()
	f, err := m.ModelFile(r.PathValue("id"), q.Get("name"), q.Get("version"))
	var b []byte
	if err == nil {
		b, err = f.Encode()
	}
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", f.Name+"-"+f.Version+".model"))
		w.WriteHeader(http.StatusOK)
		w.Write(b)
	case errors.Is(err, training.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, training.ErrNotDone):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, fedlearn.ErrModelFile):
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// wireJob converts a job; the spec's base weights are left out (the
// listing would repeat a whole model per job), their architecture kept.
func wireJob(j training.Job) agentapi.TrainingJob {
	spec := j.Spec
	if spec.Base != nil {
		spec.Base = &training.Base{Arch: spec.Base.Arch}
	}
	rawSpec, _ := json.Marshal(spec)
	out := agentapi.TrainingJob{
		ID: j.ID, State: j.State, Error: j.Error, Spec: rawSpec, Model: j.Model,
		Created: j.Created, Started: j.Started, Finished: j.Finished,
		Epochs: j.Epochs, EpochsDone: j.EpochsDone, Resumes: j.Resumes,
		History: make([]agentapi.EpochResult, 0, len(j.History)),
	}
	if d := j.Data; d != nil {
		out.Data = &agentapi.TrainingData{
			Devices: d.Devices, Anchors: d.Anchors, Unlabelled: d.Unlabelled, Incomplete: d.Incomplete,
			Examples: d.Examples, Kept: d.Kept, Train: d.Train, HeldOut: d.HeldOut,
			ClassCounts: d.ClassCounts, Digest: d.Digest, Changed: d.Changed,
		}
	}
	for _, h := range j.History {
		out.History = append(out.History, agentapi.EpochResult(h))
	}
	return out
}

func wireTrainedModel(m training.Model) agentapi.TrainedModel {
	arch, _ := json.Marshal(m.Arch)
	schema, _ := json.Marshal(m.Schema)
	stats, _ := json.Marshal(m.Stats)
	out := agentapi.TrainedModel{
		Job: m.Job, Arch: arch, Schema: schema, Labels: m.Labels, Weights: make([]agentapi.Tensor, len(m.Weights)),
		Examples: m.Examples, Epochs: m.Epochs, HeldOutAcc: m.HeldOutAcc, HeldOutLoss: m.HeldOutLoss,
		Stats: stats, Finished: m.Finished,
	}
	for i, t := range m.Weights {
		out.Weights[i] = agentapi.Tensor(t)
	}
	return out
}
