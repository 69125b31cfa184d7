package archcheck

import (
	"math"
	"path/filepath"
	"testing"
)

func sample() Dump {
	return Dump{GOARCH: "amd64", Models: []Model{{
		Name: "m", Arch: "lr", Exact: true, Weights: []float64{0.5, -0.25},
		Inputs: [][]float64{{1, 2}, {3, 4}}, Classes: []int{0, 1},
		Probs: [][]float64{{0.75, 0.25}, {0.4, 0.6}},
	}}}
}

func TestCompare(t *testing.T) {
	if diffs := Compare(sample(), sample(), Tolerance); len(diffs) != 0 {
		t.Fatalf("identical dumps differ: %v", diffs)
	}
	trained := func() Dump {
		d := sample()
		d.Models[0].Exact = false
		d.Models[0].Losses = []float64{0.9, 0.5}
		return d
	}
	for _, tc := range []struct {
		name   string
		change func(*Dump)
		differ bool
	}{
		{"rounding", func(d *Dump) { d.Models[0].Probs[0][0] += 4e-6; d.Models[0].Probs[0][1] -= 4e-6 }, false},
		{"probability beyond tolerance", func(d *Dump) { d.Models[0].Probs[1][1] += 2e-5 }, true},
		{"NaN probability", func(d *Dump) { d.Models[0].Probs[1][0] = math.NaN() }, true},
		{"one weight bit", func(d *Dump) { d.Models[0].Weights[1] = math.Nextafter(-0.25, 0) }, true},
		{"input", func(d *Dump) { d.Models[0].Inputs[0][1] = 2.5 }, true},
		{"class", func(d *Dump) { d.Models[0].Classes[0] = 1 }, true},
		{"missing prediction", func(d *Dump) { d.Models[0].Probs = d.Models[0].Probs[:1] }, true},
		{"missing class", func(d *Dump) { d.Models[0].Classes = d.Models[0].Classes[:1] }, true},
		{"missing class probability", func(d *Dump) { d.Models[0].Probs[0] = d.Models[0].Probs[0][:1] }, true},
		{"other model", func(d *Dump) { d.Models[0].Name = "n" }, true},
		{"exactness", func(d *Dump) { d.Models[0].Exact = false }, true},
		{"no models", func(d *Dump) { d.Models = nil }, true},
	} {
		got := sample()
		tc.change(&got)
		if diffs := Compare(sample(), got, Tolerance); (len(diffs) > 0) != tc.differ {
			t.Errorf("%s: differences %q, want some: %v", tc.name, diffs, tc.differ)
		}
	}

	for _, tc := range []struct {
		name   string
		change func(*Dump)
		differ bool
	}{
		{"trained weight rounding", func(d *Dump) { d.Models[0].Weights[0] += 1e-9 }, false},
		{"trained weight beyond tolerance", func(d *Dump) { d.Models[0].Weights[0] += 2e-5 }, true},
		{"NaN trained weight", func(d *Dump) { d.Models[0].Weights[1] = math.NaN() }, true},
		{"missing trained weight", func(d *Dump) { d.Models[0].Weights = d.Models[0].Weights[:1] }, true},
		{"loss rounding", func(d *Dump) { d.Models[0].Losses[1] += 1e-9 }, false},
		{"loss beyond tolerance", func(d *Dump) { d.Models[0].Losses[1] += 2e-5 }, true},
		{"missing epoch", func(d *Dump) { d.Models[0].Losses = d.Models[0].Losses[:1] }, true},
	} {
		got := trained()
		tc.change(&got)
		if diffs := Compare(trained(), got, Tolerance); (len(diffs) > 0) != tc.differ {
			t.Errorf("%s: differences %q, want some: %v", tc.name, diffs, tc.differ)
		}
	}

	// A tie may be decided either way.
	tie, tied := sample(), sample()
	tie.Models[0].Probs[0] = []float64{0.5, 0.5}
	tied.Models[0].Probs[0] = []float64{0.5, 0.5}
	tied.Models[0].Classes[0] = 1
	if diffs := Compare(tie, tied, Tolerance); len(diffs) != 0 {
		t.Errorf("a tie decided the other way counted as a difference: %v", diffs)
	}
}

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.json")
	d := sample()
	d.Models[0].Probs[0] = []float64{1.0 / 3, 2.0 / 3}
	if err := Write(path, d); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if diffs := Compare(d, got, 0); len(diffs) != 0 {
		t.Fatalf("dump changed on its way through the file: %v", diffs)
	}
	if err := Write(path, Dump{GOARCH: "amd64"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err == nil {
		t.Error("a dump without models was read without error")
	}
}
