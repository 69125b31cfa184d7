package models

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Sentinel errors.
var (
	// ErrUnknownModel: no model of that name is deployed.
	ErrUnknownModel = errors.New("models: no such model")
	// ErrInput: features given to Predict do not fit the model.
	ErrInput = errors.New("models: invalid features")
	// ErrRefused wraps every reason an install is refused for (see
	// InstallError).
	ErrRefused = errors.New("models: model refused")
)

// Reasons an install fails, the label of
// edgefleet_model_install_failures_total.
const (
	ReasonFormat    = "format"    // not a model file, truncated, corrupted
	ReasonSignature = "signature" // missing or bad signature, or no key to check it with
	ReasonDigest    = "digest"    // the digest does not match the content
	ReasonModel     = "model"     // architecture, weights, schema or labels do not fit together
	ReasonDevices   = "devices"   // the schema reads metrics none of the agent's devices sends
	ReasonStorage   = "storage"   // could not be written to the data directory
)

var reasons = []string{ReasonFormat, ReasonSignature, ReasonDigest, ReasonModel, ReasonDevices, ReasonStorage}

// InstallError is an install refused for Reason.
type InstallError struct {
	Reason string
	Err    error
}

func (e *InstallError) Error() string { return e.Err.Error() }

// Unwrap returns the cause and ErrRefused.
func (e *InstallError) Unwrap() []error { return []error{e.Err, ErrRefused} }

func refuse(reason string, format string, args ...any) error {
	return &InstallError{Reason: reason, Err: fmt.Errorf("models: "+format, args...)}
}

// Spec is a model file's content, verified and decoded.
type Spec struct {
	Name    string
	Version string
	// Digest is the SHA-256 of the file's content, hex.
	Digest  string
	Arch    fedlearn.Arch
	Weights fedlearn.Weights
	Schema  fedlearn.Schema
	Labels  []string
}

// MaxNameLen bounds a model's name.
const MaxNameLen = 64

// CheckName refuses names that are not 1-64 of A-Z a-z 0-9 - _ . and
// start with a letter or digit: a model's name is also its file name.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("models: model name %q: want 1 to %d characters", name, MaxNameLen)
	}
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '-' && c != '_' && c != '.')) {
			return fmt.Errorf("models: model name %q: want letters, digits, - _ . (starting with a letter or digit)", name)
		}
	}
	return nil
}

// check verifies that the parts of a spec fit together: a valid name and
// version, the weights of the architecture (finite), a schema with one
// feature per input, a label per class.
func (s *Spec) check() error {
	if err := CheckName(s.Name); err != nil {
		return refuse(ReasonModel, "%v", err)
	}
	if s.Version == "" || len(s.Version) > 128 {
		return refuse(ReasonModel, "model %s: version %q: want 1 to 128 characters", s.Name, s.Version)
	}
	if err := s.Arch.Validate(); err != nil {
		return refuse(ReasonModel, "model %s %s: %v", s.Name, s.Version, err)
	}
	if err := s.Weights.Check(s.Arch); err != nil {
		return refuse(ReasonModel, "model %s %s: %v", s.Name, s.Version, err)
	}
	if err := s.Schema.Validate(); err != nil {
		return refuse(ReasonModel, "model %s %s: %v", s.Name, s.Version, err)
	}
	if n := len(s.Schema.Features); n != s.Arch.Inputs {
		return refuse(ReasonModel, "model %s %s: schema has %d features, architecture %s takes %d inputs", s.Name, s.Version, n, s.Arch, s.Arch.Inputs)
	}
	if n := len(s.Labels); n != s.Arch.Classes {
		return refuse(ReasonModel, "model %s %s: %d labels, architecture %s has %d classes", s.Name, s.Version, n, s.Arch, s.Arch.Classes)
	}
	seen := make(map[string]bool, len(s.Labels))
	for i, l := range s.Labels {
		if l == "" || seen[l] {
			return refuse(ReasonModel, "model %s %s: label %d %q is empty or repeated", s.Name, s.Version, i, l)
		}
		seen[l] = true
	}
	return nil
}

// Model is a deployed model, ready to serve. Its spec never changes; a
// new version is a new Model.
type Model struct {
	spec    Spec
	loaded  time.Time
	metrics []string       // distinct metrics the features read
	index   map[string]int // feature name -> position
	served  atomic.Int64
	fwd     sync.Pool // *fedlearn.Forward over spec.Weights
	fromCP  bool      // signed with the control plane's key
}

func newModel(s Spec, loaded time.Time) (*Model, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if _, err := fedlearn.NewForward(s.Arch, s.Weights); err != nil {
		return nil, refuse(ReasonModel, "model %s %s: %v", s.Name, s.Version, err)
	}
	m := &Model{spec: s, loaded: loaded, metrics: s.Schema.Metrics(), index: make(map[string]int, len(s.Schema.Features))}
	for i, f := range s.Schema.Features {
		m.index[f.Name] = i
	}
	m.fwd.New = func() any {
		f, _ := fedlearn.NewForward(m.spec.Arch, m.spec.Weights) // checked above
		return f
	}
	return m, nil
}

// Name, Version, Digest, Arch, Labels, Features describe the model.
func (m *Model) Name() string        { return m.spec.Name }
func (m *Model) Version() string     { return m.spec.Version }
func (m *Model) Digest() string      { return m.spec.Digest }
func (m *Model) Arch() fedlearn.Arch { return m.spec.Arch }
func (m *Model) Labels() []string    { return append([]string(nil), m.spec.Labels...) }
func (m *Model) Features() []fedlearn.Feature {
	return append([]fedlearn.Feature(nil), m.spec.Schema.Features...)
}

// Schema is the model's feature schema (do not modify it).
func (m *Model) Schema() fedlearn.Schema { return m.spec.Schema }

// Metrics are the distinct metrics the model's features read.
func (m *Model) Metrics() []string { return append([]string(nil), m.metrics...) }

// Loaded is when this version started serving.
func (m *Model) Loaded() time.Time { return m.loaded }

// Served is how many predictions this version made.
func (m *Model) Served() int64 { return m.served.Load() }

// Prediction is a model's answer for one example.
type Prediction struct {
	Class         int
	Label         string
	Probabilities []float64
}

// PredictRaw predicts from raw feature values in schema order (NaN where
// missing: imputed). It checks the count and refuses infinite values,
// naming the feature. raw is overwritten with the model's inputs.
func (m *Model) PredictRaw(raw []float64) (Prediction, error) {
	feats := m.spec.Schema.Features
	if len(raw) != len(feats) {
		return Prediction{}, fmt.Errorf("%w: %d features given, model %s takes %d", ErrInput, len(raw), m.spec.Name, len(feats))
	}
	for i, v := range raw {
		if math.IsInf(v, 0) {
			return Prediction{}, fmt.Errorf("%w: feature %q (index %d) is %v: not finite", ErrInput, feats[i].Name, i, v)
		}
	}
	probs := make([]float64, m.spec.Arch.Classes)
	c, err := m.predictInto(raw, probs)
	if err != nil {
		return Prediction{}, err
	}
	return Prediction{Class: c, Label: m.spec.Labels[c], Probabilities: probs}, nil
}

// predictInto normalises raw in place and runs the forward pass into
// probs; it counts the prediction.
func (m *Model) predictInto(raw, probs []float64) (int, error) {
	if err := m.spec.Schema.Normalize(raw, raw); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInput, err)
	}
	f := m.fwd.Get().(*fedlearn.Forward)
	c, err := f.Predict(raw, probs)
	m.fwd.Put(f)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInput, err)
	}
	m.served.Add(1)
	return c, nil
}

// FeatureIndex is the position of the named feature; ok is false when
// the model has none of that name.
func (m *Model) FeatureIndex(name string) (int, bool) {
	i, ok := m.index[name]
	return i, ok
}
