package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
)

// writeSyntheticData writes a small occupancy data set (occupied when the
// light is on) and a small WISDM-shaped one under a new shared data
// directory, so that 'fl train' runs without the real data.
func writeSyntheticData(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	occ := func(name string, n int) {
		var b strings.Builder
		b.WriteString(`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n")
		for i := range n {
			on := i%3 == 0
			light, y := 5+float64(i%7), 0
			if on {
				light, y = 400+float64(i%11), 1
			}
			fmt.Fprintf(&b, "\"2015-02-02 %02d:%02d:00\",%g,27.2,%g,%d,0.0048,%d\n", (i/60)%24, i%60, 20+float64(i%5)/10, light, 450+i%90, y)
		}
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	occ(datasets.OccupancyTrainFile, 300)
	for _, f := range datasets.OccupancyTestFiles {
		occ(f, 90)
	}
	return dir
}

func TestFLTrainOccupancy(t *testing.T) {
	e := bareEnv(t)
	dir := writeSyntheticData(t)
	modelPath := filepath.Join(t.TempDir(), "occ.model")
	out := e.must("fl", "train", "--dataset", "occupancy", "--model", "lr", "--epochs", "20", "--lr", "0.05", "--data", dir, "--json", "--out", modelPath)
	r := decodeJSON[flTrainResult](t, out)
	if r.Dataset != "occupancy" || r.Model != "lr" || r.TrainExamples != 300 || len(r.Epochs) != 20 || len(r.Tests) != 2 ||
		r.Tests[0].Name != "datatest" || r.Tests[1].Examples != 90 || r.DataDir != dir || r.Config.LearnRate != 0.05 || r.Config.Solver != "adam" {
		t.Fatalf("result %+v", r)
	}
	if r.Epochs[19].Loss >= r.Epochs[0].Loss || r.Tests[0].Accuracy < 0.95 {
		t.Fatalf("did not learn the light: losses %v..%v, test accuracy %v", r.Epochs[0].Loss, r.Epochs[19].Loss, r.Tests[0].Accuracy)
	}
	// The model file carries the model and its normalisation: served on
	// the raw test readings, it scores what the run reported.
	b, err := os.ReadFile(modelPath)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := fedlearn.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if mf.Name != "occupancy-lr" || mf.Version != "1" || mf.DigestHex() != r.ModelDigest || mf.Training.Epochs != 20 ||
		mf.Training.Params["learn_rate"] != "0.05" || mf.Schema.Features[2].Metric != "light" || mf.Labels[1] != "occupied" {
		t.Fatalf("model file %+v", mf)
	}
	raw, err := datasets.LoadOccupancyFile(dir, datasets.OccupancyTestFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	fw, err := fedlearn.NewForward(mf.Arch, mf.Weights)
	if err != nil {
		t.Fatal(err)
	}
	correct, loss := 0, 0.0
	x, probs := make([]float64, mf.Arch.Inputs), make([]float64, mf.Arch.Classes)
	for i, row := range raw.X {
		if err := mf.Schema.Normalize(x, row); err != nil {
			t.Fatal(err)
		}
		if c, _ := fw.Predict(x, probs); c == raw.Y[i] {
			correct++
		}
		loss -= math.Log(probs[raw.Y[i]])
	}
	loss /= float64(raw.Len())
	if acc := float64(correct) / float64(raw.Len()); acc != r.Tests[0].Accuracy || mf.Training.Accuracy != acc || math.Abs(loss-r.Tests[0].Loss) > 1e-12 {
		t.Fatalf("model file scores %v (loss %v) on datatest, run reported %v (loss %v), file says %v", acc, loss, r.Tests[0].Accuracy, r.Tests[0].Loss, mf.Training.Accuracy)
	}
	// The table, and the data directory from the environment.
	e.vars[datasets.EnvDir] = dir
	table := e.must("fl", "train", "--dataset", "occupancy", "--model", "mlp:4", "--epochs", "2", "--solver", "momentum", "--lr", "0.01")
	for _, want := range []string{"\ndatatest2  90", "momentum 0.9, learning rate 0.01", "mlp:4, 5 inputs, 2 classes, 34 parameters"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestFLTrainErrors(t *testing.T) {
	e := bareEnv(t)
	dir := writeSyntheticData(t)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--dataset", "mnist", "--model", "lr"}, 2, `--dataset "mnist"`},
		{[]string{"--dataset", "occupancy", "--model", "cnn"}, 2, "--model"},
		{[]string{"--dataset", "occupancy"}, 2, "model"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--epochs", "0"}, 2, "--epochs"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--momentum", "0.5"}, 2, "--momentum"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--solver", "rmsprop"}, 1, "unknown solver"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--lr", "-1"}, 1, "learning rate"},
		{[]string{"--dataset", "wisdm", "--model", "lr"}, 1, "WISDM_ar_v1.1_transformed.arff"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--out", "m", "--name", "a/b"}, 2, "--name"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--out", "m", "--version", ""}, 2, "--version"},
		{[]string{"--dataset", "occupancy", "--model", "lr", "--epochs", "1", "--out", filepath.Join(dir, "no", "such", "m")}, 1, "no such file"},
	} {
		args := append([]string{"fl", "train", "--data", dir}, c.args...)
		r := e.run(args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("edgectl %s: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), r.code, r.stderr, c.code, c.msg)
		}
	}
	bad := filepath.Join(dir, datasets.OccupancyTestFiles[1])
	if err := os.WriteFile(bad, []byte("\"Date\",\"Temperature\",\"Humidity\",\"Light\",\"CO2\",\"HumidityRatio\",\"Occupancy\"\n\"2015-02-02 10:00:00\",20,27,x,450,0.0048,0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("fl", "train", "--data", dir, "--dataset", "occupancy", "--model", "lr")
	if want := bad + ` line 2: Light "x" is not a finite number`; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("malformed file: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
}
