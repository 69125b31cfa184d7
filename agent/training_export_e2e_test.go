package agent_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// TestTrainedModelExportDeploys: a local training job's model, exported
// through the local API as a model file, decodes, predicts as the job's
// model does (within 1e-12), is accepted by a real control plane's
// registry, and deployed back to the agent serves the same predictions.
func TestTrainedModelExportDeploys(t *testing.T) {
	e := startEnrolled(t, "edge-x", "train-export", map[string]string{"site": "a"}, nil)
	a := e.a

	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("sensor-1"))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer dev.Disconnect(50)
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := 0; i < 300; i++ {
		hot := i % 2
		p := fmt.Sprintf(`{"ts":%d,"temp":%d,"co2":%d,"hot":%d}`, start.Add(time.Duration(i)*time.Second).Unix(), 10+15*hot+i%7, 400+(i*37)%300, hot)
		if tok := dev.Publish("devices/sensor-1/telemetry", 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	api := agentapi.New("http://"+a.APIAddr(), nil)
	defer api.CloseIdleConnections()
	waitUntil(t, 20*time.Second, "readings stored", func() (bool, string) {
		st, err := api.Ingest(t.Context())
		return err == nil && st.Store != nil && st.Store.Messages >= 300, fmt.Sprint(err)
	})

	schema := fedlearn.Schema{Features: []fedlearn.Feature{
		{Name: "t", Metric: "temp", Agg: fedlearn.AggLatest},
		{Name: "co2_mean", Metric: "co2", Agg: fedlearn.AggMean, Window: fedlearn.Duration(10 * time.Second)},
	}, Label: fedlearn.Label{Metric: "hot"}}
	job, err := a.Training().Submit(training.Spec{Model: "mlp:4", Schema: schema, Labels: []string{"cold", "hot"},
		Device: "sensor-1", Epochs: 5, LearnRate: 0.05, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if job, err = a.Training().Wait(ctx, job.ID); err != nil || job.State != training.StateDone {
		t.Fatalf("job %+v: %v", job, err)
	}
	md, err := a.Training().Model(job.ID)
	if err != nil {
		t.Fatal(err)
	}

	b, err := api.TrainedModelFile(t.Context(), job.ID, "sensor-hot", "1")
	if err != nil {
		t.Fatal(err)
	}
	f, err := fedlearn.Decode(b)
	if err != nil {
		t.Fatalf("exported file: %v", err)
	}
	if f.SignerID != "" || f.Name != "sensor-hot" || f.Version != "1" || f.Arch.String() != md.Arch.String() || f.Training.Epochs != 5 || f.Training.Seed != 3 ||
		f.Training.Examples != md.Examples || f.Training.Accuracy != md.HeldOutAcc || f.Training.Params["job"] != job.ID {
		t.Fatalf("exported file: %+v", f)
	}
	// The job's model: its schema (with the normalisation it was trained
	// with) and weights, forward pass over them.
	jobFwd, err := fedlearn.NewForward(md.Arch, md.Params())
	if err != nil {
		t.Fatal(err)
	}
	fileFwd, err := fedlearn.NewForward(f.Arch, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	inputs := [][]float64{{10, 450}, {25, 600}, {17.5, math.NaN()}, {31, 420}, {12, 690}}
	predict := func(s fedlearn.Schema, fw *fedlearn.Forward, raw []float64) []float64 {
		x := append([]float64(nil), raw...)
		if err := s.Normalize(x, x); err != nil {
			t.Fatal(err)
		}
		probs := make([]float64, 2)
		if _, err := fw.Predict(x, probs); err != nil {
			t.Fatal(err)
		}
		return probs
	}
	want := make([][]float64, len(inputs))
	for i, raw := range inputs {
		want[i] = predict(md.Schema, jobFwd, raw)
		if got := predict(f.Schema, fileFwd, raw); !closeTo(got, want[i], 1e-12) {
			t.Fatalf("input %v: file predicts %v, the job's model %v", raw, got, want[i])
		}
	}

	// Pushed to the registry and deployed back to the agent, it serves
	// the same predictions.
	e.deploy(t, b, "sensor-hot", "1", "site=a")
	for i, raw := range inputs {
		p, err := a.Models().Predict("sensor-hot", append([]float64(nil), raw...))
		if err != nil {
			t.Fatal(err)
		}
		if !closeTo(p.Probabilities, want[i], 1e-12) {
			t.Fatalf("input %v: deployed model predicts %v, the job's model %v", raw, p.Probabilities, want[i])
		}
	}
}

func closeTo(a, b []float64, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}
