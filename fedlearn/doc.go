// Package fedlearn defines edgefleet's models and how they learn: the
// architectures (multinomial logistic regression and a ReLU MLP), their
// weights, the feature schema that turns a device's readings into model
// inputs, training as gorgonia graphs, a light forward pass for inference,
// and the versioned model file format.
//
// Training (Trainer) builds one gorgonia graph and tape machine per model
// for a fixed batch size and reuses them for every step: dense layers with
// ReLU between, a fused softmax cross-entropy op weighted per row (short
// batches are padded with zero-weight rows), gorgonia's SGD, momentum and
// Adam solvers, L2 and the FedProx proximal term added to the gradients.
// Shuffling is seeded, so the same seed, data and initial weights give the
// same weights bit for bit; checkpoints carry the solver state and the
// generator, so a resumed run equals an uninterrupted one. Where gorgonia
// v0.9.18 keeps what this needs in unexported fields (solver state, the
// tape machine's program), gorgonia_internals.go reaches it by reflection,
// checks the layout, and tests pin the behaviour.
//
// Inference runs through Forward (Predict per reading, PredictBatch for
// many), a plain pass over the same weights: `edge-agent bench ml` shows it
// beside a gorgonia inference graph and a hand-written gonum baseline.
//
// It is usable without any network and depends on no other package of ours
// than pqcrypto (model signatures).
package fedlearn
