package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/modeltest"
)

// TestInferenceAgainstAgent drives the inference commands against a real
// agent serving a signed model.
func TestInferenceAgainstAgent(t *testing.T) {
	e := newDevicesEnv(t)
	k := modeltest.Key(t, 3)
	keyFile := modeltest.KeyFile(t, t.TempDir(), k)
	ag := startTestAgent(t, "edge-m", func(cfg *agent.Config) {
		cfg.Ingest.Enabled = true
		cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
		cfg.Models.VerifyingKeyFile = keyFile
	})
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()
	if out := e.must("inference", "list"); out != "No models deployed on this agent.\n" {
		t.Fatalf("empty list: %q", out)
	}
	f := modeltest.Comfort(t, "1.2", 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ag.Models().Install(ctx, modeltest.Sign(t, f, k)); err != nil {
		t.Fatal(err)
	}
	out := e.must("inference", "list")
	if !strings.Contains(out, "comfort") || !strings.Contains(out, "1.2") || !strings.Contains(out, "mlp:8") || !strings.Contains(out, "temperature,humidity,co2") {
		t.Fatalf("list:\n%s", out)
	}
	ms := decodeJSON[[]agentapi.Model](t, e.must("agent-models", "list", "--json"))
	if len(ms) != 1 || ms[0].Name != "comfort" || len(ms[0].Features) != 3 || ms[0].Features[2].Window != "1m0s" || ms[0].Digest != ag.Models().List()[0].Digest() {
		t.Fatalf("list --json: %+v", ms)
	}

	wc, wp := modeltest.Forward(t, f, []float64{25, 52, 1200})
	r := decodeJSON[agentapi.PredictResult](t, e.must("inference", "predict", "comfort", "25", "52", "1200", "--json"))
	if r.Class.Index != wc || r.Class.Label != f.Labels[wc] || !modeltest.Close(r.Probabilities, wp, 0) {
		t.Fatalf("predict: %+v, forward %d %v", r, wc, wp)
	}
	r2 := decodeJSON[agentapi.PredictResult](t, e.must("inference", "predict", "comfort", "--feature", "co2_mean=1200", "--feature", "temp=25", "--feature", "hum=52", "--json"))
	if r2.Class != r.Class || !modeltest.Close(r2.Probabilities, r.Probabilities, 0) {
		t.Fatalf("by name %+v, in order %+v", r2, r)
	}
	if out := e.must("inference", "predict", "comfort", "25", "-", "1200"); !strings.Contains(out, "Model comfort version 1.2: class") {
		t.Fatalf("predict table: %q", out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inference", "predict", "comfort", "25", "52"}, 1, "wrong number of features: 2 given"},
		{[]string{"inference", "predict", "comfort", "--feature", "temp=1", "--feature", "hum=2", "--feature", "co2=3"}, 1, `no feature "co2"`},
		{[]string{"inference", "predict", "nope", "1", "2", "3"}, 1, "404"},
		{[]string{"inference", "predict", "comfort", "1", "NaN", "3"}, 2, "want a finite number"},
		{[]string{"inference", "predict", "comfort"}, 2, "no features"},
	} {
		r := e.run(c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d saying %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
}
