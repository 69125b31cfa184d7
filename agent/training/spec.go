package training

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// ErrInvalidSpec is wrapped by every error about a job spec; the error is a
// *SpecError naming the field.
var ErrInvalidSpec = errors.New("training: invalid job spec")

// SpecError is a job spec refused for one field.
type SpecError struct {
	Field string // JSON path of the field: "epochs", "schema.features[2].window"
	Msg   string
}

func (e *SpecError) Error() string {
	return fmt.Sprintf("training: invalid job spec: %s: %s", e.Field, e.Msg)
}

// Unwrap makes errors.Is(err, ErrInvalidSpec) hold.
func (e *SpecError) Unwrap() error { return ErrInvalidSpec }

func specErr(field, format string, args ...any) error {
	return &SpecError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Normalisation modes.
const (
	// NormalizeFit standardises the features with the mean and standard
	// deviation of this device's training split (the schema's are
	// replaced), and imputes missing values with the mean.
	NormalizeFit = "fit"
	// NormalizeKeep uses the schema's mean, std and impute values as given
	// (a global model's, computed across the fleet).
	NormalizeKeep = "keep"
)

// Defaults of a job spec.
const (
	DefaultEpochs    = 10
	DefaultSolver    = "adam"
	DefaultLearnRate = 0.01
	DefaultBatchSize = 64
	DefaultHoldOut   = 0.2
)

// Bounds of a job spec.
const (
	MaxEpochs    = 10000
	MaxBatchSize = fedlearn.MaxBatchSize
	MaxHoldOut   = 0.9
	MaxLabelLen  = 256
)

// Spec is a training job: what to train, on which of this agent's data,
// and how. Its JSON is the body of POST /v1/training/jobs
// (agentapi.TrainingJobSpec).
//
// Examples: one per reading of the anchor metric in [From, To) of each
// selected device (fedlearn.BuildExamples). With a label metric
// (schema.label.metric) the anchor is the label metric and the class is
// its value, a whole number in [0, len(Labels)); readings with another
// value are skipped as unlabelled. With a state label
// (schema.label.state_key, "collection/key" where "{device}" stands for
// the device id, e.g. "labels/{device}") the anchor is the first feature's
// metric and every example of a device takes the class named by the
// state's current value (an LWW value: a JSON string, or plain text, equal
// to one of Labels); a device without that key, or with a value not in
// Labels, contributes no example (counted as unlabelled). The state holds
// no history: relabelling a device relabels all its examples.
type Spec struct {
	// Model is the architecture to train from a seeded initialisation:
	// "lr" or "mlp:W[,W...]". Empty when Base is set.
	Model string `json:"model,omitempty"`
	// Base is the model to start from (a global model in a federated
	// round); its architecture must fit the schema and the labels.
	Base   *Base           `json:"base,omitempty"`
	Schema fedlearn.Schema `json:"schema"`
	Labels []string        `json:"labels"`
	// Device selects one device; empty means every device with stored
	// readings.
	Device string `json:"device,omitempty"`
	// From and To bound the anchors' times, [From, To). A zero To is set
	// to the submission time, so the job's data does not grow while it
	// runs. Readings of a feature's metric up to its widest window before
	// From still feed the windows of the first examples; a "latest"
	// feature without a window sees readings from From on only.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
	// Normalize is NormalizeFit or NormalizeKeep; default fit for a new
	// model, keep with a Base.
	Normalize string `json:"normalize,omitempty"`
	// Epochs over the training split; default DefaultEpochs.
	Epochs int `json:"epochs,omitempty"`
	// Solver is sgd, momentum or adam (default); LearnRate default 0.01;
	// Momentum is used by the momentum solver; BatchSize default 64; L2
	// is the weight decay; Mu the FedProx proximal term toward Base.
	Solver    string  `json:"solver,omitempty"`
	LearnRate float64 `json:"learn_rate,omitempty"`
	Momentum  float64 `json:"momentum,omitempty"`
	BatchSize int     `json:"batch_size,omitempty"`
	L2        float64 `json:"l2,omitempty"`
	Mu        float64 `json:"mu,omitempty"`
	// HoldOut is the fraction of the examples kept out of training, chosen
	// with Seed, to report loss and accuracy on; default 0.2, at most 0.9.
	HoldOut *float64 `json:"hold_out,omitempty"`
	// Seed draws the initial weights, the example sample, the split and
	// the batches: the same seed on the same data trains the same model.
	Seed uint64 `json:"seed,omitempty"`
	// MaxExamples caps the examples kept (a uniform sample of them); 0
	// means the agent's training.max_examples, which also bounds it.
	MaxExamples int `json:"max_examples,omitempty"`
	// StartBy makes the job deferrable: it may start at any time until
	// then, and the agent's scheduler starts it at the greenest time of
	// its zone's carbon forecast, battery permitting (state "waiting"
	// meanwhile; as the one job, it keeps others out until it has run).
	// Zero runs it now. At most MaxStartDelay after submission.
	StartBy time.Time `json:"start_by,omitzero"`
	// ExpectedDuration is how long the job is expected to run, to fit it
	// in its window and estimate its energy; 0 means the agent's
	// green.training_duration. At most MaxExpectedDuration.
	ExpectedDuration fedlearn.Duration `json:"expected_duration,omitempty"`
}

// Bounds of a job's deferral.
const (
	MaxStartDelay       = 7 * 24 * time.Hour
	MaxExpectedDuration = 24 * time.Hour
)

// Base is a model to start from.
type Base struct {
	Arch    fedlearn.Arch `json:"arch"`
	Weights []Tensor      `json:"weights"`
}

// Tensor is one named parameter with its values, row-major (the JSON of
// fedlearn.Tensor with its data).
type Tensor struct {
	Name  string    `json:"name"`
	Shape []int     `json:"shape"`
	Data  []float64 `json:"data"`
}

// NewBase is the base of a job that starts from weights w of
// architecture a (a federated round's global model); the data are shared,
// not copied.
func NewBase(a fedlearn.Arch, w fedlearn.Weights) *Base {
	return &Base{Arch: a, Weights: tensors(w)}
}

// tensors converts weights to their JSON form (sharing the data).
func tensors(w fedlearn.Weights) []Tensor {
	out := make([]Tensor, len(w))
	for i, t := range w {
		out[i] = Tensor{Name: t.Name, Shape: t.Shape, Data: t.Data}
	}
	return out
}

// weights converts tensors back (sharing the data).
func weights(ts []Tensor) fedlearn.Weights {
	out := make(fedlearn.Weights, len(ts))
	for i, t := range ts {
		out[i] = fedlearn.Tensor{Name: t.Name, Shape: t.Shape, Data: t.Data}
	}
	return out
}

// resolve fills the defaults in, checks every field and returns the
// architecture to train. now is the submission time; maxExamples the
// agent's cap.
func (s *Spec) resolve(now time.Time, maxExamples int) (fedlearn.Arch, error) {
	if err := checkSchema(s.Schema); err != nil {
		return fedlearn.Arch{}, err
	}
	if len(s.Labels) < 2 || len(s.Labels) > fedlearn.MaxClasses {
		return fedlearn.Arch{}, specErr("labels", "%d class names (want 2-%d)", len(s.Labels), fedlearn.MaxClasses)
	}
	seen := map[string]bool{}
	for i, l := range s.Labels {
		if l == "" || len(l) > MaxLabelLen || strings.ContainsFunc(l, func(r rune) bool { return r < ' ' }) {
			return fedlearn.Arch{}, specErr(fmt.Sprintf("labels[%d]", i), "%q: want 1-%d printable characters", l, MaxLabelLen)
		}
		if seen[l] {
			return fedlearn.Arch{}, specErr(fmt.Sprintf("labels[%d]", i), "%q appears twice", l)
		}
		seen[l] = true
	}
	var arch fedlearn.Arch
	switch {
	case s.Base != nil && s.Model != "":
		return arch, specErr("model", "give model or base, not both")
	case s.Base != nil:
		arch = s.Base.Arch
		if err := arch.Validate(); err != nil {
			return arch, specErr("base.arch", "%v", err)
		}
		if err := weights(s.Base.Weights).Check(arch); err != nil {
			return arch, specErr("base.weights", "%v", err)
		}
	case s.Model == "":
		return arch, specErr("model", "missing: want lr or mlp:W[,W...] (or a base model)")
	default:
		var err error
		if arch, err = fedlearn.ParseArch(s.Model, len(s.Schema.Features), len(s.Labels)); err != nil {
			return arch, specErr("model", "%v", err)
		}
	}
	if arch.Inputs != len(s.Schema.Features) {
		return arch, specErr("base.arch.inputs", "%d, the schema has %d features", arch.Inputs, len(s.Schema.Features))
	}
	if arch.Classes != len(s.Labels) {
		return arch, specErr("base.arch.classes", "%d, labels name %d classes", arch.Classes, len(s.Labels))
	}
	if s.Device != "" && (len(s.Device) > 256 || strings.ContainsAny(s.Device, "/+#") || strings.ContainsFunc(s.Device, func(r rune) bool { return r < ' ' })) {
		return arch, specErr("device", "%q is not a device id", s.Device)
	}
	if s.To.IsZero() {
		s.To = now
	}
	if !s.From.IsZero() && !s.From.Before(s.To) {
		return arch, specErr("from", "%s is not before to (%s)", s.From.Format(time.RFC3339), s.To.Format(time.RFC3339))
	}
	switch s.Normalize {
	case "":
		s.Normalize = NormalizeFit
		if s.Base != nil {
			s.Normalize = NormalizeKeep
		}
	case NormalizeFit, NormalizeKeep:
	default:
		return arch, specErr("normalize", "%q (want fit or keep)", s.Normalize)
	}
	if s.Epochs == 0 {
		s.Epochs = DefaultEpochs
	}
	if s.Epochs < 1 || s.Epochs > MaxEpochs {
		return arch, specErr("epochs", "%d (want 1-%d)", s.Epochs, MaxEpochs)
	}
	switch s.Solver {
	case "":
		s.Solver = DefaultSolver
	case "sgd", "momentum", "adam":
	default:
		return arch, specErr("solver", "%q (want sgd, momentum or adam)", s.Solver)
	}
	if s.LearnRate == 0 {
		s.LearnRate = DefaultLearnRate
	}
	if !(s.LearnRate > 0 && s.LearnRate <= 10) {
		return arch, specErr("learn_rate", "%v (want 0 < learn_rate <= 10)", s.LearnRate)
	}
	if !(s.Momentum >= 0 && s.Momentum < 1) {
		return arch, specErr("momentum", "%v (want 0 <= momentum < 1)", s.Momentum)
	}
	if s.Momentum != 0 && s.Solver != "momentum" {
		return arch, specErr("momentum", "%v is only for the momentum solver, not %s", s.Momentum, s.Solver)
	}
	if s.BatchSize == 0 {
		s.BatchSize = DefaultBatchSize
	}
	if s.BatchSize < 1 || s.BatchSize > MaxBatchSize {
		return arch, specErr("batch_size", "%d (want 1-%d)", s.BatchSize, MaxBatchSize)
	}
	widest := max(arch.Inputs, arch.Classes)
	for _, h := range arch.Hidden {
		widest = max(widest, h)
	}
	if s.BatchSize*widest > fedlearn.MaxParams {
		return arch, specErr("batch_size", "%d with layers %d wide needs too much memory (batch x width at most %d)", s.BatchSize, widest, fedlearn.MaxParams)
	}
	if !(s.L2 >= 0 && s.L2 < math.Inf(1)) {
		return arch, specErr("l2", "%v (want a finite value >= 0)", s.L2)
	}
	if !(s.Mu >= 0 && s.Mu < math.Inf(1)) {
		return arch, specErr("mu", "%v (want a finite value >= 0)", s.Mu)
	}
	if s.Mu > 0 && s.Base == nil {
		return arch, specErr("mu", "the proximal term needs the global weights as base")
	}
	if s.HoldOut == nil {
		h := DefaultHoldOut
		s.HoldOut = &h
	}
	if h := *s.HoldOut; !(h >= 0 && h <= MaxHoldOut) {
		return arch, specErr("hold_out", "%v (want 0-%v)", h, MaxHoldOut)
	}
	if !s.StartBy.IsZero() && s.StartBy.After(now.Add(MaxStartDelay)) {
		return arch, specErr("start_by", "%s is more than %v after the submission (%s)", s.StartBy.Format(time.RFC3339), MaxStartDelay, now.Format(time.RFC3339))
	}
	if d := time.Duration(s.ExpectedDuration); d < 0 || d > MaxExpectedDuration {
		return arch, specErr("expected_duration", "%v (want 0-%v)", d, MaxExpectedDuration)
	}
	if s.MaxExamples == 0 {
		s.MaxExamples = maxExamples
	}
	if s.MaxExamples < 2 || s.MaxExamples > maxExamples {
		return arch, specErr("max_examples", "%d (want 2-%d, the agent's training.max_examples)", s.MaxExamples, maxExamples)
	}
	return arch, nil
}

// checkSchema checks the schema, naming the field at fault.
func checkSchema(sc fedlearn.Schema) error {
	n := len(sc.Features)
	if n == 0 || n > fedlearn.MaxInputs {
		return specErr("schema.features", "%d features (want 1-%d)", n, fedlearn.MaxInputs)
	}
	for i, f := range sc.Features {
		one := fedlearn.Schema{Features: []fedlearn.Feature{f}}
		if err := one.Validate(); err != nil {
			return specErr(fmt.Sprintf("schema.features[%d]", i), "%v", strings.TrimPrefix(err.Error(), fedlearn.ErrSchema.Error()+": "))
		}
		if f.Metric == sc.Label.Metric {
			return specErr(fmt.Sprintf("schema.features[%d].metric", i), "%q is the label metric", f.Metric)
		}
	}
	switch l := sc.Label; {
	case l.Metric == "" && l.StateKey == "":
		return specErr("schema.label", "missing: want metric or state_key")
	case l.Metric != "" && l.StateKey != "":
		return specErr("schema.label", "give metric or state_key, not both")
	case l.StateKey != "":
		coll, key, ok := strings.Cut(l.StateKey, "/")
		if !ok || coll == "" || key == "" {
			return specErr("schema.label.state_key", "%q: want collection/key, e.g. labels/{device}", l.StateKey)
		}
	}
	if err := sc.Validate(); err != nil {
		return specErr("schema", "%v", err)
	}
	return nil
}

// stateKey is the collection and key of a state label for device.
func stateKey(sc fedlearn.Schema, device string) (coll, key string) {
	coll, key, _ = strings.Cut(sc.Label.StateKey, "/")
	return coll, strings.ReplaceAll(key, "{device}", device)
}
