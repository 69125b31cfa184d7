package agentapi

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Model is a model the agent serves: an item of GET /v1/models.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Digest is the SHA-256 of the model file's content, hex.
	Digest string `json:"digest"`
	// Arch is the architecture: "lr" or "mlp:64,32".
	Arch     string         `json:"arch"`
	Inputs   int            `json:"inputs"`
	Classes  int            `json:"classes"`
	Features []ModelFeature `json:"features"`
	Labels   []string       `json:"labels"`
	// Metrics are the distinct metrics the features read: the model runs
	// for the devices that send all of them.
	Metrics []string `json:"metrics"`
	// Loaded is when this version started serving.
	Loaded time.Time `json:"loaded"`
	// Predictions this version made (on readings and through predict).
	Predictions int64 `json:"predictions"`
}

// ModelFeature is one input of a model.
type ModelFeature struct {
	Name   string `json:"name"`
	Metric string `json:"metric"`
	Agg    string `json:"agg"`
	Window string `json:"window,omitempty"` // "30s"; empty without one
}

// ModelList is the answer of GET /v1/models.
type ModelList struct {
	Models []Model `json:"models"`
}

// PredictRequest is the body of POST /v1/models/{name}/predict. Features
// is either an array of the model's features in order, or an object of
// feature name to value; a null value is missing and imputed as in
// training.
type PredictRequest struct {
	Features json.RawMessage `json:"features"`
}

// PredictedClass is a prediction's class.
type PredictedClass struct {
	Index int    `json:"index"`
	Label string `json:"label"`
}

// PredictResult is the answer of POST /v1/models/{name}/predict.
type PredictResult struct {
	Model         string         `json:"model"`
	Version       string         `json:"version"`
	Class         PredictedClass `json:"class"`
	Probabilities []float64      `json:"probabilities"` // by class index
}

// Models lists the models the agent serves, by name.
func (c *Client) Models(ctx context.Context) ([]Model, error) {
	var l ModelList
	if err := c.do(ctx, http.MethodGet, "/v1/models", nil, nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Models, nil
}

// Predict asks the named model for the class of one example; features
// is the request's features as JSON (an array or an object, see
// PredictRequest). An unknown model is an *Error with status 404, bad
// features one with status 400.
func (c *Client) Predict(ctx context.Context, name string, features json.RawMessage) (PredictResult, error) {
	body, err := json.Marshal(PredictRequest{Features: features})
	if err != nil {
		return PredictResult{}, fmt.Errorf("agentapi: predict: features are not JSON: %w", err)
	}
	var r PredictResult
	return r, c.do(ctx, http.MethodPost, "/v1/models/"+url.PathEscape(name)+"/predict", nil, body, http.StatusOK, &r)
}

// FeatureArray encodes features in order for Predict; NaN is sent as
// null (missing, imputed). Infinities are sent as 1e999 and -1e999, which
// the agent refuses as not finite.
func FeatureArray(values []float64) json.RawMessage {
	b := []byte{'['}
	for i, v := range values {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendFeature(b, v)
	}
	return append(b, ']')
}

// FeatureObject encodes features by name for Predict, as FeatureArray
// encodes values.
func FeatureObject(values map[string]float64) json.RawMessage {
	b := []byte{'{'}
	first := true
	for k, v := range values {
		if !first {
			b = append(b, ',')
		}
		first = false
		kb, _ := json.Marshal(k) // a string always encodes
		b = append(b, kb...)
		b = append(b, ':')
		b = appendFeature(b, v)
	}
	return append(b, '}')
}

func appendFeature(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "null"...)
	case math.IsInf(v, 1):
		return append(b, "1e999"...)
	case math.IsInf(v, -1):
		return append(b, "-1e999"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
