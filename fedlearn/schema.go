package fedlearn

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrSchema is returned for an invalid feature schema or for inputs that do
// not fit one.
var ErrSchema = errors.New("fedlearn: invalid feature schema")

// Agg is how a feature summarises a metric's readings.
type Agg string

// Aggregations over a device's readings of one metric.
const (
	AggLatest Agg = "latest" // the most recent reading (within Window if set)
	AggMean   Agg = "mean"   // over the Window before the example's time
	AggStd    Agg = "std"    // population standard deviation over the Window
	AggMin    Agg = "min"
	AggMax    Agg = "max"
)

// Duration is a time.Duration written as text ("30s", "5m") in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30s"-style text.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("fedlearn: duration must be text like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("fedlearn: duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Feature is one model input: a metric of the device's readings, summarised
// by Agg, imputed when missing and standardised.
type Feature struct {
	Name   string   `json:"name"`
	Metric string   `json:"metric"`
	Agg    Agg      `json:"agg"`
	Window Duration `json:"window,omitempty"`
	// Impute is the raw value used when the feature is missing (typically
	// the training mean).
	Impute float64 `json:"impute"`
	// Mean and Std standardise the raw (imputed) value: (v-Mean)/Std. A Std
	// of 0 is read as 1.
	Mean float64 `json:"mean"`
	Std  float64 `json:"std"`
}

// Label says where a training example's class comes from: a metric of the
// same device's readings (its value is the class index) or a replicated
// state key (its value is a class name).
type Label struct {
	Metric   string `json:"metric,omitempty"`
	StateKey string `json:"state_key,omitempty"`
}

// Schema is a model's input contract.
type Schema struct {
	Features []Feature `json:"features"`
	Label    Label     `json:"label"`
}

// Validate checks the schema's own consistency.
func (s Schema) Validate() error {
	if len(s.Features) == 0 || len(s.Features) > MaxInputs {
		return fmt.Errorf("%w: %d features (want 1-%d)", ErrSchema, len(s.Features), MaxInputs)
	}
	seen := make(map[string]bool, len(s.Features))
	for i, f := range s.Features {
		if f.Name == "" || f.Metric == "" {
			return fmt.Errorf("%w: feature %d needs a name and a metric", ErrSchema, i)
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: feature name %q appears twice", ErrSchema, f.Name)
		}
		seen[f.Name] = true
		switch f.Agg {
		case AggLatest:
		case AggMean, AggStd, AggMin, AggMax:
			if f.Window <= 0 {
				return fmt.Errorf("%w: feature %q: %s needs a window", ErrSchema, f.Name, f.Agg)
			}
		default:
			return fmt.Errorf("%w: feature %q: unknown aggregation %q", ErrSchema, f.Name, f.Agg)
		}
		if f.Window < 0 {
			return fmt.Errorf("%w: feature %q: negative window", ErrSchema, f.Name)
		}
		for _, v := range []float64{f.Impute, f.Mean, f.Std} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("%w: feature %q: non-finite normalisation value %v", ErrSchema, f.Name, v)
			}
		}
		if f.Std < 0 {
			return fmt.Errorf("%w: feature %q: negative std %v", ErrSchema, f.Name, f.Std)
		}
	}
	if s.Label.Metric != "" && s.Label.StateKey != "" {
		return fmt.Errorf("%w: label names both a metric and a state key", ErrSchema)
	}
	return nil
}

// Metrics returns the distinct metrics the features read, in first-use order.
func (s Schema) Metrics() []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range s.Features {
		if !seen[f.Metric] {
			seen[f.Metric] = true
			out = append(out, f.Metric)
		}
	}
	return out
}

// Normalize turns raw feature values (NaN where missing) into model inputs:
// imputed, then standardised. dst and raw may be the same slice. An infinite
// raw value is an error naming the feature.
func (s Schema) Normalize(dst, raw []float64) error {
	if len(raw) != len(s.Features) || len(dst) != len(s.Features) {
		return fmt.Errorf("%w: %d values, schema has %d features", ErrSchema, len(raw), len(s.Features))
	}
	for i, f := range s.Features {
		v := raw[i]
		if math.IsInf(v, 0) {
			return fmt.Errorf("%w: feature %q is %v", ErrSchema, f.Name, v)
		}
		if math.IsNaN(v) {
			v = f.Impute
		}
		std := f.Std
		if std == 0 {
			std = 1
		}
		dst[i] = (v - f.Mean) / std
	}
	return nil
}

// Standardize sets each feature's Impute and Mean to the mean of its
// non-missing raw values in rows and Std to their population standard
// deviation: the statistics a model is trained with and must be served
// with.
func (s *Schema) Standardize(rows [][]float64) {
	for i := range s.Features {
		var n, sum, sq float64
		for _, r := range rows {
			if v := r[i]; !math.IsNaN(v) && !math.IsInf(v, 0) {
				n++
				sum += v
			}
		}
		mean := 0.0
		if n > 0 {
			mean = sum / n
		}
		for _, r := range rows {
			if v := r[i]; !math.IsNaN(v) && !math.IsInf(v, 0) {
				sq += (v - mean) * (v - mean)
			}
		}
		std := 0.0
		if n > 0 {
			std = math.Sqrt(sq / n)
		}
		f := &s.Features[i]
		f.Impute, f.Mean, f.Std = mean, mean, std
	}
}
