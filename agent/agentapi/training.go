package agentapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// TrainingJobSpec is the body of POST /v1/training/jobs: train a model on
// this agent's own stored readings (package agent/training documents the
// fields and their defaults). Schema, Base.Arch and the weights are the
// JSON of package fedlearn's Schema, Arch and tensors, passed through as
// they are so that this package stays stdlib-only.
type TrainingJobSpec struct {
	// Model is the architecture, "lr" or "mlp:64[,32...]" (inputs from the
	// schema, classes from Labels); empty when Base is set.
	Model string `json:"model,omitempty"`
	// Base starts from given weights (a global model) instead of a seeded
	// initialisation.
	Base *TrainingBase `json:"base,omitempty"`
	// Schema is the feature schema (fedlearn.Schema: features, label).
	Schema json.RawMessage `json:"schema"`
	// Labels are the class names, in class-index order.
	Labels []string `json:"labels"`
	// Device selects one device's readings; empty means every device the
	// agent has stored readings of.
	Device string `json:"device,omitempty"`
	// From and To bound the examples' times, [From, To); zero From means
	// the oldest reading, zero To the time of submission.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
	// Normalize is "fit" (standardise with this device's training split)
	// or "keep" (the schema's mean and std as given).
	Normalize   string   `json:"normalize,omitempty"`
	Epochs      int      `json:"epochs,omitempty"`
	Solver      string   `json:"solver,omitempty"`
	LearnRate   float64  `json:"learn_rate,omitempty"`
	Momentum    float64  `json:"momentum,omitempty"`
	BatchSize   int      `json:"batch_size,omitempty"`
	L2          float64  `json:"l2,omitempty"`
	Mu          float64  `json:"mu,omitempty"`
	HoldOut     *float64 `json:"hold_out,omitempty"`
	Seed        uint64   `json:"seed,omitempty"`
	MaxExamples int      `json:"max_examples,omitempty"`
	// StartBy defers the job: the agent starts it at the greenest time of
	// its zone's carbon forecast until then, battery permitting (state
	// "waiting" meanwhile); zero runs it now. ExpectedDuration ("30m")
	// sizes its window and energy estimate.
	StartBy          time.Time `json:"start_by,omitzero"`
	ExpectedDuration string    `json:"expected_duration,omitempty"`
}

// TrainingBase is a model to start from: its architecture
// (fedlearn.Arch) and weights.
type TrainingBase struct {
	Arch    json.RawMessage `json:"arch"`
	Weights []Tensor        `json:"weights"`
}

// Tensor is one named parameter, row-major.
type Tensor struct {
	Name  string    `json:"name"`
	Shape []int     `json:"shape"`
	Data  []float64 `json:"data"`
}

// TrainingJob is a training job's status: the answer of POST and GET
// /v1/training/jobs/{id}, and an item of GET /v1/training/jobs.
type TrainingJob struct {
	ID    string `json:"id"`
	State string `json:"state"` // queued, waiting, preparing, running, done, failed, canceled
	// Error says why a failed job failed.
	Error    string          `json:"error,omitempty"`
	Spec     json.RawMessage `json:"spec"`
	Model    string          `json:"model"` // the architecture trained ("lr", "mlp:64")
	Created  time.Time       `json:"created"`
	Started  time.Time       `json:"started,omitzero"`
	Finished time.Time       `json:"finished,omitzero"`
	// Epochs is the number of epochs asked for, EpochsDone those finished
	// (and checkpointed).
	Epochs     int `json:"epochs"`
	EpochsDone int `json:"epochs_done"`
	// Resumes lists the epochs after which the job was resumed from its
	// checkpoint (after a restart of the agent).
	Resumes []int         `json:"resumes,omitempty"`
	Data    *TrainingData `json:"data,omitempty"`
	History []EpochResult `json:"history"`
}

// TrainingData describes the examples a job trains on.
type TrainingData struct {
	Devices []string `json:"devices"`
	// Anchors are the readings examples are made at; Unlabelled were
	// skipped for want of a valid class; Incomplete had a feature
	// missing (imputed).
	Anchors    int64 `json:"anchors"`
	Unlabelled int64 `json:"unlabelled"`
	Incomplete int64 `json:"incomplete"`
	// Examples were made; Kept is what the cap (max_examples) kept, a
	// uniform sample; Train and HeldOut split them.
	Examples int64 `json:"examples"`
	Kept     int   `json:"kept"`
	Train    int   `json:"train"`
	HeldOut  int   `json:"held_out"`
	// ClassCounts are the kept examples per class.
	ClassCounts []int `json:"class_counts"`
	// Digest is the SHA-256 of the kept examples, hex.
	Digest string `json:"digest"`
	// Changed is set when a resumed job found other data than it started
	// with (readings arrived late or were deleted by retention).
	Changed bool `json:"changed,omitempty"`
}

// EpochResult is one finished epoch: the mean training loss, and loss and
// accuracy on the held-out split (0 without one).
type EpochResult struct {
	Epoch       int     `json:"epoch"`
	TrainLoss   float64 `json:"train_loss"`
	HeldOutLoss float64 `json:"held_out_loss"`
	HeldOutAcc  float64 `json:"held_out_accuracy"`
	Seconds     float64 `json:"seconds"`
}

// TrainingJobList is the answer of GET /v1/training/jobs, newest first.
type TrainingJobList struct {
	Jobs []TrainingJob `json:"jobs"`
}

// TrainedModel is the answer of GET /v1/training/jobs/{id}/model: the
// result of a finished job, for the federated update and for export.
type TrainedModel struct {
	Job     string          `json:"job"`
	Arch    json.RawMessage `json:"arch"`
	Schema  json.RawMessage `json:"schema"`
	Labels  []string        `json:"labels"`
	Weights []Tensor        `json:"weights"`
	// Examples is the number of training examples (FedAvg's weight).
	Examples    int     `json:"examples"`
	Epochs      int     `json:"epochs"`
	HeldOutAcc  float64 `json:"held_out_accuracy"`
	HeldOutLoss float64 `json:"held_out_loss"`
	// Stats are the per-feature count, sum and sum of squares of the raw
	// training features (fedlearn.FeatureStats).
	Stats    json.RawMessage `json:"stats"`
	Finished time.Time       `json:"finished"`
}

// CreateTrainingJob calls POST /v1/training/jobs; the agent answers 202
// with the queued job, 400 naming a bad field, 409 while another job runs.
func (c *Client) CreateTrainingJob(ctx context.Context, spec TrainingJobSpec) (TrainingJob, error) {
	body, err := json.Marshal(spec)
	if err != nil {
		return TrainingJob{}, err
	}
	var j TrainingJob
	return j, c.do(ctx, http.MethodPost, "/v1/training/jobs", nil, body, http.StatusAccepted, &j)
}

// TrainingJobs calls GET /v1/training/jobs.
func (c *Client) TrainingJobs(ctx context.Context) ([]TrainingJob, error) {
	var l TrainingJobList
	return l.Jobs, c.do(ctx, http.MethodGet, "/v1/training/jobs", nil, nil, http.StatusOK, &l)
}

// TrainingJob calls GET /v1/training/jobs/{id}.
func (c *Client) TrainingJob(ctx context.Context, id string) (TrainingJob, error) {
	var j TrainingJob
	return j, c.do(ctx, http.MethodGet, "/v1/training/jobs/"+url.PathEscape(id), nil, nil, http.StatusOK, &j)
}

// CancelTrainingJob calls DELETE /v1/training/jobs/{id}: a queued or
// running job stops (its last checkpoint stays).
func (c *Client) CancelTrainingJob(ctx context.Context, id string) (TrainingJob, error) {
	var j TrainingJob
	return j, c.do(ctx, http.MethodDelete, "/v1/training/jobs/"+url.PathEscape(id), nil, nil, http.StatusOK, &j)
}

// TrainedModel calls GET /v1/training/jobs/{id}/model; 409 until the job
// is done.
func (c *Client) TrainedModel(ctx context.Context, id string) (TrainedModel, error) {
	var m TrainedModel
	return m, c.do(ctx, http.MethodGet, "/v1/training/jobs/"+url.PathEscape(id)+"/model", nil, nil, http.StatusOK, &m)
}

// TrainedModelFile calls GET /v1/training/jobs/{id}/model?format=file:
// the done job's model as an unsigned model file (fedlearn's format),
// named name and version ("" for the agent's defaults: "job-ID" and
// "1").
func (c *Client) TrainedModelFile(ctx context.Context, id, name, version string) ([]byte, error) {
	q := url.Values{"format": {"file"}}
	if name != "" {
		q.Set("name", name)
	}
	if version != "" {
		q.Set("version", version)
	}
	return c.raw(ctx, http.MethodGet, "/v1/training/jobs/"+url.PathEscape(id)+"/model", q, nil, http.StatusOK)
}
