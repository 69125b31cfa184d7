package localapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/models"
)

// Inference is the model runtime.
type Inference interface {
	// Models is the model manager; an error (one of Config.Unavailable)
	// when the agent is not running or the model runtime is off.
	Models() (*models.Manager, error)
}

// maxPredictBytes bounds a predict request (4096 features of 20-odd
// characters fit).
const maxPredictBytes = 1 << 20

func (s *server) handleModels(w http.ResponseWriter, r *http.Request) {
	mg, err := s.b.Models()
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	out := agentapi.ModelList{Models: []agentapi.Model{}}
	for _, m := range mg.List() {
		out.Models = append(out.Models, wireModel(m))
	}
	writeJSON(w, http.StatusOK, out)
}

func wireModel(m *models.Model) agentapi.Model {
	a := m.Arch()
	out := agentapi.Model{Name: m.Name(), Version: m.Version(), Digest: m.Digest(), Arch: a.String(),
		Inputs: a.Inputs, Classes: a.Classes, Labels: m.Labels(), Metrics: m.Metrics(),
		Loaded: m.Loaded().UTC(), Predictions: m.Served()}
	for _, f := range m.Features() {
		wf := agentapi.ModelFeature{Name: f.Name, Metric: f.Metric, Agg: string(f.Agg)}
		if f.Window > 0 {
			wf.Window = time.Duration(f.Window).String()
		}
		out.Features = append(out.Features, wf)
	}
	return out
}

func (s *server) handlePredict(w http.ResponseWriter, r *http.Request) {
	mg, err := s.b.Models()
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	name := r.PathValue("name")
	m, ok := mg.Get(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("agent: no model %q is deployed on this agent", name))
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxPredictBytes)); err != nil {
		writeError(w, http.StatusBadRequest, "agent: reading the predict request: "+err.Error())
		return
	}
	var req agentapi.PredictRequest
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, `agent: predict request: want {"features": [v1, v2, ...]} or {"features": {"name": v, ...}}: `+err.Error())
		return
	}
	raw, err := parseFeatures(m, req.Features)
	if err != nil {
		writeError(w, http.StatusBadRequest, "agent: "+err.Error())
		return
	}
	p, err := mg.Predict(name, raw)
	switch {
	case errors.Is(err, models.ErrUnknownModel):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case errors.Is(err, models.ErrInput):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, agentapi.PredictResult{Model: m.Name(), Version: m.Version(),
		Class: agentapi.PredictedClass{Index: p.Class, Label: p.Label}, Probabilities: p.Probabilities})
}

// parseFeatures reads the features of a predict request, in the model's
// order (NaN for null: missing). Errors name the feature.
func parseFeatures(m *models.Model, js json.RawMessage) ([]float64, error) {
	feats := m.Features()
	names := make([]string, len(feats))
	for i, f := range feats {
		names[i] = f.Name
	}
	js = bytes.TrimSpace(js)
	switch {
	case len(js) == 0 || string(js) == "null":
		return nil, fmt.Errorf(`predict request has no "features" (model %s takes %d: %s)`, m.Name(), len(feats), strings.Join(names, ", "))
	case js[0] == '[':
		var vals []json.RawMessage
		if err := json.Unmarshal(js, &vals); err != nil {
			return nil, fmt.Errorf("features: %w", err)
		}
		if len(vals) != len(feats) {
			return nil, fmt.Errorf("wrong number of features: %d given, model %s takes %d (%s)", len(vals), m.Name(), len(feats), strings.Join(names, ", "))
		}
		raw := make([]float64, len(vals))
		for i, v := range vals {
			x, err := featureValue(names[i], i, v)
			if err != nil {
				return nil, err
			}
			raw[i] = x
		}
		return raw, nil
	case js[0] == '{':
		var vals map[string]json.RawMessage
		if err := json.Unmarshal(js, &vals); err != nil {
			return nil, fmt.Errorf("features: %w", err)
		}
		raw := make([]float64, len(feats))
		for k := range vals {
			if _, ok := m.FeatureIndex(k); !ok {
				return nil, fmt.Errorf("model %s has no feature %q (features: %s)", m.Name(), k, strings.Join(names, ", "))
			}
		}
		for i, n := range names {
			v, ok := vals[n]
			if !ok {
				return nil, fmt.Errorf("wrong number of features: feature %q (index %d) is missing (send null to impute it); model %s takes %d", n, i, m.Name(), len(feats))
			}
			x, err := featureValue(n, i, v)
			if err != nil {
				return nil, err
			}
			raw[i] = x
		}
		return raw, nil
	}
	return nil, fmt.Errorf(`"features" must be an array or an object, not %.40s`, js)
}

// featureValue reads one feature: a JSON number, or null (missing: NaN).
// A number beyond float64 (1e999) or the strings "NaN" and "Inf" are
// refused as not finite.
func featureValue(name string, i int, v json.RawMessage) (float64, error) {
	v = bytes.TrimSpace(v)
	s := string(v)
	if s == "null" {
		return math.NaN(), nil
	}
	if len(s) > 0 && s[0] == '"' {
		var str string
		if json.Unmarshal(v, &str) == nil {
			if f, err := strconv.ParseFloat(str, 64); err == nil || errors.Is(err, strconv.ErrRange) {
				if math.IsNaN(f) || math.IsInf(f, 0) {
					return 0, fmt.Errorf("feature %q (index %d) is %s: not finite", name, i, str)
				}
			}
		}
		return 0, fmt.Errorf("feature %q (index %d) is %.40s: want a number or null", name, i, s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if errors.Is(err, strconv.ErrRange) && math.IsInf(f, 0) {
		return 0, fmt.Errorf("feature %q (index %d) is %.40s: not finite (beyond float64)", name, i, s)
	}
	if err != nil || !json.Valid(v) {
		return 0, fmt.Errorf("feature %q (index %d) is %.40s: want a number or null", name, i, s)
	}
	return f, nil
}
