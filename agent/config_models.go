package agent

import (
	"fmt"
	"time"
)

// ModelsConfig configures the model runtime (package agent/models): the
// models the control plane deploys to this agent, run on the readings
// ingestion commits, their predictions published to
// devices/{device_id}/inference and stored in DataDir/predictions.db.
type ModelsConfig struct {
	// Enabled turns the model runtime on (it needs ingestion for
	// inference on readings; models still install and answer the local
	// API's predict without it). Default true.
	Enabled bool `yaml:"enabled"`
	// QueueReadings bounds the committed readings waiting for inference;
	// when full the oldest are dropped and counted
	// (edgefleet_inference_dropped_readings_total). Only readings of
	// metrics a deployed model reads are queued. Default 4096.
	QueueReadings int `yaml:"queue_readings"`
	// MaxDevices bounds the devices whose recent readings are held for
	// windowed features; past it the least recently seen device's are
	// dropped. Default 1024.
	MaxDevices int `yaml:"max_devices"`
	// MaxPoints bounds the readings held per device and metric (a
	// feature's window keeps at most this many). Default 128.
	MaxPoints int `yaml:"max_points"`
	// Publish sends each prediction to devices/{device_id}/inference
	// (QoS 1, at least once: see package agent/models). The predictions
	// database is the outbox: predictions are published from it in order
	// and marked published once the broker acknowledged them, so a slow
	// or absent broker delays them and loses none (within
	// predictions_max_rows). Default true.
	Publish bool `yaml:"publish"`
	// PublishMaxInFlight bounds the predictions published and not yet
	// acknowledged by the broker; the others wait in the predictions
	// database, so a slow broker never holds inference back nor grows
	// memory. Default 128.
	PublishMaxInFlight int `yaml:"publish_max_in_flight"`
	// PredictionsMaxRows bounds the predictions stored (oldest deleted
	// first). It is the outbox's bound too: when the broker stays away
	// long enough for it to be reached, the oldest unpublished
	// predictions are deleted and counted in
	// edgefleet_inference_unpublished_dropped_total. Default 100000.
	PredictionsMaxRows int64 `yaml:"predictions_max_rows"`
	// PredictionsMaxAge bounds how long a published prediction is
	// stored (unpublished ones do not age out). Default 168h (7 days).
	PredictionsMaxAge time.Duration `yaml:"predictions_max_age"`
	// VerifyingKeyFile, when set, names a file holding the ML-DSA-65
	// public key (base64 of its 1952 bytes) that model files must be
	// signed with, instead of the control plane's key pinned at
	// enrollment: for agents without a control plane, or models signed
	// by a key of their own. Default "" (the control plane's key).
	VerifyingKeyFile string `yaml:"verifying_key_file"`
}

func defaultModelsConfig() ModelsConfig {
	return ModelsConfig{Enabled: true, QueueReadings: 4096, MaxDevices: 1024, MaxPoints: 128, Publish: true, PublishMaxInFlight: 128,
		PredictionsMaxRows: 100000, PredictionsMaxAge: 7 * 24 * time.Hour}
}

func (c *ModelsConfig) validate() error {
	if !c.Enabled {
		return nil
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("agent: models.%s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.QueueReadings < 1 || c.QueueReadings > 1<<20:
		return bad("queue_readings", "%d (want 1..%d)", c.QueueReadings, 1<<20)
	case c.MaxDevices < 1 || c.MaxDevices > 1<<20:
		return bad("max_devices", "%d (want 1..%d)", c.MaxDevices, 1<<20)
	case c.MaxPoints < 1 || c.MaxPoints > 1<<16:
		return bad("max_points", "%d (want 1..%d)", c.MaxPoints, 1<<16)
	case c.PublishMaxInFlight < 1 || c.PublishMaxInFlight > 65535:
		return bad("publish_max_in_flight", "%d (want 1..65535)", c.PublishMaxInFlight)
	case c.PredictionsMaxRows < 1:
		return bad("predictions_max_rows", "%d (want at least 1)", c.PredictionsMaxRows)
	case c.PredictionsMaxAge <= 0:
		return bad("predictions_max_age", "%s (want a positive duration)", c.PredictionsMaxAge)
	}
	return nil
}
