// Package modelsync is the contract between the agent's uplink, which
// learns from the control plane which models the agent should serve and
// fetches them (signed by the control plane, sealed to the agent), and the
// agent's model runtime, which verifies, loads and serves them.
package modelsync

import "context"

// InstalledModel is a model version the runtime serves.
type InstalledModel struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Digest is the lower-case hex SHA-256 of the model file's content
	// (fedlearn.File.DigestHex; a signature does not change it).
	Digest string `json:"digest"`
	// FromControlPlane is true when the model came from the control
	// plane: its signature verifies with the control plane's key pinned
	// at enrollment. Only such models are removed when the control plane
	// no longer assigns them; others (signed with
	// models.verifying_key_file's key and placed in the models folder)
	// are left alone.
	FromControlPlane bool `json:"from_control_plane"`
}

// ModelInstaller is the agent's model runtime as the uplink sees it. Its
// methods are called from one goroutine (the uplink's model watch) but
// must be safe alongside the runtime's own use.
type ModelInstaller interface {
	// Install verifies signedFile (fedlearn's model file format, signed by
	// the control plane: fedlearn.Verify with the control plane's pinned
	// key, then the schema against the device's metrics), loads it and
	// swaps it in for the model of the same name. The version serving
	// before keeps serving until the new one is ready, and keeps serving
	// if Install fails. A version older than the one serving is installed
	// like any other (a rollback).
	Install(ctx context.Context, signedFile []byte) error
	// Installed lists the model versions serving now.
	Installed() []InstalledModel
	// Remove stops serving the named model and deletes its file durably
	// (the agent's control-plane assignments no longer name it). Removing
	// a model that is not serving is not an error.
	Remove(ctx context.Context, name string) error
}
