package training

import (
	"fmt"
	"strconv"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// DefaultFileName is the model name of an exported job's file when none
// is given: "job-" and the job's id.
func DefaultFileName(id string) string { return "job-" + id }

// ModelFile exports done job id's model as a model file (fedlearn.File,
// unsigned, for the control plane's registry): its architecture and
// weights, the schema with the normalisation it was trained with, the
// labels, and the training metadata (data range and devices, epochs,
// seed, examples and held-out count, last training loss, held-out
// accuracy, solver settings). name "" means DefaultFileName(id), version
// "" means "1". Errors wrap ErrNotFound, ErrNotDone, or
// fedlearn.ErrModelFile for a bad name or version.
func (m *Manager) ModelFile(id, name, version string) (*fedlearn.File, error) {
	j, err := m.Job(id)
	if err != nil {
		return nil, err
	}
	md, err := m.Model(id)
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = DefaultFileName(id)
	}
	if version == "" {
		version = "1"
	}
	if err := fedlearn.CheckName(name); err != nil {
		return nil, fmt.Errorf("training: exporting job %s: %w", id, err)
	}
	if err := fedlearn.CheckVersion(version); err != nil {
		return nil, fmt.Errorf("training: exporting job %s: %w", id, err)
	}
	s := j.Spec
	tr := fedlearn.Training{
		Dataset: "agent readings", From: s.From, To: s.To, Epochs: md.Epochs, Seed: s.Seed,
		Examples: md.Examples, Accuracy: md.HeldOutAcc, Created: md.Finished,
		Params: map[string]string{"job": id},
	}
	if s.Device != "" {
		tr.Dataset = "agent readings of device " + s.Device
	}
	if j.Data != nil {
		tr.HeldOut = j.Data.HeldOut
	}
	if n := len(j.History); n > 0 {
		tr.Loss = j.History[n-1].TrainLoss
	}
	put := func(k, v string) {
		if v != "" && v != "0" {
			tr.Params[k] = v
		}
	}
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	put("solver", s.Solver)
	put("learn_rate", g(s.LearnRate))
	put("momentum", g(s.Momentum))
	put("batch_size", strconv.Itoa(s.BatchSize))
	put("l2", g(s.L2))
	put("mu", g(s.Mu))
	put("normalize", s.Normalize)
	if s.HoldOut != nil {
		put("hold_out", g(*s.HoldOut))
	}
	if s.Base != nil {
		put("base", "given")
	}
	f := &fedlearn.File{Name: name, Version: version, Arch: md.Arch, Weights: md.Params(),
		Schema: md.Schema, Labels: md.Labels, Training: tr}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("training: exporting job %s: %w", id, err)
	}
	return f, nil
}
