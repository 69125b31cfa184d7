// Package fedlearn defines edgefleet's models and how they learn: the
// architectures (multinomial logistic regression and a ReLU MLP), their
// weights, the feature schema that turns a device's readings into model
// inputs, training as gorgonia graphs, a light forward pass for inference,
// and the versioned model file format.
//
// It is usable without any network and depends on no other package of ours
// than pqcrypto (model signatures).
package fedlearn
