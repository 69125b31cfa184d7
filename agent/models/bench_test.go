package models

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// BenchmarkInferenceReading measures the runtime's work for one arriving
// message of three readings (temperature, humidity, co2) of one of 100
// devices: window update, feature extraction (a one-minute mean over the
// device's co2 readings at 1 Hz), normalisation and the forward pass of
// an MLP 3→8→2; no publishing or storing. It reports the p99 of single
// readings (p99-ns/op) beside the mean. The baseline, BenchmarkForward,
// is the bare forward pass over the same model.
func BenchmarkInferenceReading(b *testing.B) {
	rt, _, _, _ := newTestRuntime(b, testFile(b, "1", 3))
	rt.cfg.Store, rt.cfg.MaxDevices = nil, 1024
	base := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	devs := make([]string, 100)
	for i := range devs {
		devs[i] = fmt.Sprintf("dev-%d", i)
	}
	rs := make([]ingest.TapReading, 3)
	msg := func(i int) []ingest.TapReading {
		d, at := devs[i%len(devs)], base.Add(time.Duration(i/len(devs))*time.Second).UnixNano()
		rs[0] = ingest.TapReading{Device: d, Metric: "temperature", Time: at, Value: 20 + float64(i%10)}
		rs[1] = ingest.TapReading{Device: d, Metric: "humidity", Time: at, Value: 40}
		rs[2] = ingest.TapReading{Device: d, Metric: "co2", Time: at, Value: 400 + float64(i%500)}
		return rs
	}
	ctx := context.Background()
	for i := 0; i < 100*len(devs); i++ { // fill the windows
		rt.Process(ctx, msg(i))
	}
	before := counter(rt.mg.m.predictions.WithLabelValues("comfort"))
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rs := msg(100*len(devs) + i)
		t0 := time.Now()
		rt.Process(ctx, rs)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	if got := counter(rt.mg.m.predictions.WithLabelValues("comfort")) - before; got != float64(b.N) {
		b.Fatalf("%v predictions for %d messages", got, b.N)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns/op")
}

// BenchmarkForward is the bare forward pass of the model
// BenchmarkInferenceReading runs: its baseline.
func BenchmarkForward(b *testing.B) {
	f := testFile(b, "1", 3)
	fw, err := fedlearn.NewForward(f.Arch, f.Weights)
	if err != nil {
		b.Fatal(err)
	}
	x, probs := []float64{0.3, -0.2, 1.1}, make([]float64, 2)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		x[0] = float64(i%10) / 10
		if _, err := fw.Predict(x, probs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPredictAPI measures Manager.Predict, the local API's
// prediction without HTTP.
func BenchmarkPredictAPI(b *testing.B) {
	k := signingKey(b, 1)
	mg, _ := newTestManager(b, b.TempDir(), k, nil)
	if err := mg.Install(context.Background(), sign(b, testFile(b, "1", 3), k)); err != nil {
		b.Fatal(err)
	}
	raw := make([]float64, 3)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		raw[0], raw[1], raw[2] = 21, 40, float64(400+i%500)
		if _, err := mg.Predict("comfort", raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreAdd measures storing predictions in rounds of 50 (a
// group commit's worth at 5,000 messages/s): ns/op is per prediction.
func BenchmarkStoreAdd(b *testing.B) {
	st, err := OpenStore(StoreConfig{Path: b.TempDir() + "/p.db"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	at := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	round := make([]StoredPrediction, 50)
	for i := range round {
		round[i] = StoredPrediction{Device: fmt.Sprintf("dev-%d", i%10), Model: "comfort", Version: "1", Class: 1, Label: "stuffy",
			Probabilities: []float64{0.25, 0.75}, ReadingTime: at, At: at}
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i += len(round) {
		if err := st.Add(context.Background(), round); err != nil {
			b.Fatal(err)
		}
	}
}
