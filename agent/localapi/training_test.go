package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/training"
)

// noReadings is a store without devices: jobs fail for want of examples.
type noReadings struct{}

func (noReadings) DeviceNames(context.Context) ([]string, error) { return nil, nil }
func (noReadings) SeriesPage(context.Context, string, string, int64, int64, int) ([]ingest.SeriesPoint, error) {
	return nil, nil
}

const goodSpec = `{"model":"lr","labels":["no","yes"],"epochs":2,
 "schema":{"features":[{"name":"t","metric":"temp","agg":"mean","window":"5m"}],"label":{"metric":"occ"}}}`

// TestTrainingSpecErrors: every bad spec answers 400 naming the field.
func TestTrainingSpecErrors(t *testing.T) {
	m, err := training.New(training.Config{Dir: t.TempDir(), Readings: noReadings{}, MaxExamples: 1000, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	base := newServer(t, &fake{training: m})
	for _, tc := range []struct{ body, field string }{
		{`[]`, "JSON object"},
		{`{"modle":"lr"}`, "modle: unknown field"},
		{strings.Replace(goodSpec, `"epochs":2`, `"epochs":"two"`, 1), "epochs:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"epochs":-2`, 1), "epochs:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"from":"yesterday"`, 1), "from:"},
		{strings.Replace(goodSpec, `"5m"`, `"5 minutes"`, 1), "schema:"},
		{strings.Replace(goodSpec, `"mean"`, `"median"`, 1), "schema.features[0]"},
		{strings.Replace(goodSpec, `"metric":"occ"`, `"metric":"temp"`, 1), "schema.features[0].metric"},
		{strings.Replace(goodSpec, `"lr"`, `"mlp"`, 1), "model:"},
		{strings.Replace(goodSpec, `["no","yes"]`, `["no"]`, 1), "labels:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"mu":0.5`, 1), "mu:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"hold_out":1.5`, 1), "hold_out:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"max_examples":5000`, 1), "max_examples:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"solver":"rmsprop"`, 1), "solver:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"expected_duration":"soon"`, 1), "expected_duration:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"expected_duration":"-5m"`, 1), "expected_duration:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"start_by":"tonight"`, 1), "start_by:"},
		{strings.Replace(goodSpec, `"epochs":2`, `"start_by":"2999-01-01T00:00:00Z"`, 1), "start_by:"},
	} {
		raw := call(t, base, "POST", "/v1/training/jobs", tc.body, 400)
		var e agentapi.ErrorBody
		if err := json.Unmarshal(raw, &e); err != nil || !strings.Contains(e.Error, tc.field) {
			t.Errorf("%s: error %q does not name %q", tc.body, e.Error, tc.field)
		}
	}

	// A good spec is accepted; on a store without readings the job fails,
	// saying why, and has no model.
	var j agentapi.TrainingJob
	json.Unmarshal(call(t, base, "POST", "/v1/training/jobs", goodSpec, 202), &j)
	if j.ID == "" || j.Epochs != 2 || j.Model != "lr" {
		t.Fatalf("job %+v", j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.Wait(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(call(t, base, "GET", "/v1/training/jobs/"+j.ID, "", 200), &j)
	if j.State != training.StateFailed || !strings.Contains(j.Error, "no labelled examples") {
		t.Fatalf("job %+v", j)
	}
	call(t, base, "GET", "/v1/training/jobs/"+j.ID+"/model", "", 409)
	call(t, base, "GET", "/v1/training/jobs/nope", "", 404)
	call(t, base, "PUT", "/v1/training/jobs", "", 405)
	var l agentapi.TrainingJobList
	json.Unmarshal(call(t, base, "GET", "/v1/training/jobs", "", 200), &l)
	if len(l.Jobs) != 1 || l.Jobs[0].ID != j.ID {
		t.Fatalf("list %+v", l)
	}
	// Training disabled: 503.
	off := newServer(t, &fake{})
	call(t, off, "GET", "/v1/training/jobs", "", 503)
}

// FuzzTrainingSpec: any body either decodes into a spec the manager checks
// (accepted or refused naming a field) or is refused as a bad body; never
// a panic.
func FuzzTrainingSpec(f *testing.F) {
	f.Add([]byte(goodSpec))
	f.Add([]byte(`{"model":"mlp:64,32","labels":["a","b","c"],"hold_out":0,"schema":{"features":[{"name":"x","metric":"x","agg":"std","window":"1h"}],"label":{"state_key":"labels/{device}"}}}`))
	f.Add([]byte(`{"base":{"arch":{"kind":"lr","inputs":1,"classes":2},"weights":[{"name":"w0","shape":[1,2],"data":[0,0]},{"name":"b0","shape":[2],"data":[0,0]}]},"labels":["a","b"],"mu":0.1,"schema":{"features":[{"name":"x","metric":"x","agg":"latest"}],"label":{"metric":"y"}}}`))
	f.Add([]byte(`{"epochs":1e400}`))
	f.Add([]byte(`{"from":"2026-01-01T00:00:00Z","to":"2025-01-01T00:00:00Z"}`))
	m, err := training.New(training.Config{Dir: f.TempDir(), Readings: noReadings{}, MaxExamples: 1000, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(m.Close)
	f.Fuzz(func(t *testing.T, body []byte) {
		spec, err := decodeSpec(body)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "training: invalid job spec: ") && !strings.HasPrefix(err.Error(), "agent: training job spec: ") {
				t.Fatalf("error without its prefix: %v", err)
			}
			return
		}
		j, err := m.Submit(spec)
		switch {
		case err == nil:
			m.Wait(context.Background(), j.ID)
		case errors.Is(err, training.ErrInvalidSpec), errors.Is(err, training.ErrBusy):
		default:
			t.Fatalf("submit: %v", err)
		}
	})
}
