package cpapi

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Federated learning: operators create jobs (POST /v1/fl/jobs); agents
// pull their round task by long poll (GET /v1/agent/fl/task, "wait" as GET
// /v1/agent/keys), train from the task's global weights on their own
// readings, and post the update Δ = w_local − w_global (POST
// /v1/agent/fl/update): EncodeFLUpdate's bytes sealed under the data key
// TelemetryKeyName with FLUpdateAAD as associated data (the envelope of a
// sealed telemetry upload), and signed over the envelope with the agent's
// identity key (the key of its mTLS client certificate) in the header
// HeaderFLSignature.
//
// A job without normalisation starts with a statistics round, round 0
// (FLTask.Kind FLTaskStats): the agent sends, by the same sealed and
// signed path, its examples' per-feature count, sum and sum of squares
// (FLUpdate.Stats) instead of a delta, and every later task carries the
// schema normalised with their sums. Under local differential privacy
// (FLTask.DP) the agent clips its delta and adds Gaussian noise before
// sealing it. Under secure aggregation (FLTask.SecAgg) a round comes as
// four tasks, one per SecAgg+ stage, each answered by the same path with
// the stage's message (FLUpdate.SecAgg).

// MaxFLTaskWait bounds the "wait" parameter of GET /v1/agent/fl/task.
const MaxFLTaskWait = 5 * time.Minute

// HeaderFLSignature carries the agent's signature over the sealed update,
// base64 (standard, padded): ECDSA ASN.1 or Ed25519 over SHA-256 of the
// envelope, by the key of the client certificate the request comes with.
const HeaderFLSignature = "Edgefleet-Signature"

// HeaderFLTask names the task an update answers, "job/round/attempt": the
// associated data the envelope is opened with (FLUpdateAAD).
const HeaderFLTask = "Edgefleet-FL-Task"

// HeaderFLStage names the secure-aggregation stage an answer is for
// (FLTaskSecAgg.Stage); informational: the message inside says it too.
const HeaderFLStage = "Edgefleet-FL-Stage"

// FL job states are fedlearn/coord's (running, done, failed, canceled).

// FLJob is a federated-learning job. Spec is the resolved job spec as
// JSON (fedlearn/coord.Spec, without its initial weights in answers):
// this package leaves coord out so that the agent, which links it, does
// not link the coordinator and every strategy.
type FLJob struct {
	ID       string          `json:"id"`
	Spec     json.RawMessage `json:"spec"`
	Status   string          `json:"status"`
	Reason   string          `json:"reason,omitempty"`
	Created  time.Time       `json:"created"`
	Creator  string          `json:"created_by"`
	Finished *time.Time      `json:"finished,omitempty"`
	// Done is the number of aggregated rounds; Current the attempt in
	// progress.
	Done    int           `json:"rounds_done"`
	Current *FLRoundState `json:"current,omitempty"`
	// ModelVersion is the registry version of the finished job's model.
	ModelVersion string `json:"model_version,omitempty"`
	// Schema is the job's schema normalised by its statistics round, once
	// that round aggregated.
	Schema *fedlearn.Schema `json:"schema,omitempty"`
	// Privacy is what a job with differential privacy has spent.
	Privacy *FLPrivacy `json:"privacy,omitempty"`
}

// FLPrivacy is the differential privacy a job has spent: the rounds are
// (Epsilon, Delta)-DP (fedlearn/privacy's accountant).
type FLPrivacy struct {
	Mode    string  `json:"mode"`
	Epsilon float64 `json:"epsilon"`
	Delta   float64 `json:"delta"`
	// Budget is the ε the job stops before exceeding; 0 means none.
	Budget float64 `json:"epsilon_budget,omitempty"`
	// Rounds is the number of round attempts charged.
	Rounds int `json:"rounds"`
}

// FLRoundState is the round attempt in progress (fedlearn/coord.Round's
// JSON).
type FLRoundState struct {
	Round    int            `json:"round"`
	Attempt  int            `json:"attempt"`
	Kind     string         `json:"kind,omitempty"`
	Phase    string         `json:"phase"`
	Opened   time.Time      `json:"opened"`
	Deadline time.Time      `json:"deadline"`
	Selected []string       `json:"selected"`
	Reported []string       `json:"reported"`
	Examples int            `json:"examples"`
	Refused  map[string]int `json:"refused,omitempty"`
	SecAgg   *FLSecAggState `json:"secagg,omitempty"`
}

// FLRound is one round attempt's record with its metrics.
type FLRound struct {
	Job     string `json:"job"`
	Round   int    `json:"round"`
	Attempt int    `json:"attempt"`
	// Kind is "train", or "stats" for the statistics round (round 0).
	Kind         string         `json:"kind,omitempty"`
	Phase        string         `json:"phase"`
	Opened       time.Time      `json:"opened"`
	Closed       *time.Time     `json:"closed,omitempty"`
	Selected     []string       `json:"selected"`
	Participants int            `json:"participants"`
	Failures     int            `json:"failures"`
	Refused      map[string]int `json:"refused,omitempty"`
	Examples     int            `json:"examples"`
	Reason       string         `json:"reason,omitempty"`
	// Accuracy and Loss of the new global model on the job's evaluation
	// set, per test part; empty without one.
	Accuracy map[string]float64 `json:"accuracy,omitempty"`
	Loss     map[string]float64 `json:"loss,omitempty"`
	// BytesUp are the update bodies received, BytesDown the task bodies
	// sent; Seconds from open to close.
	BytesUp   int64   `json:"bytes_up"`
	BytesDown int64   `json:"bytes_down"`
	Seconds   float64 `json:"seconds"`
	// Epsilon is the ε a DP job has spent after this attempt, at Delta;
	// Q the fraction of the available clients it selected.
	Epsilon float64 `json:"epsilon,omitempty"`
	Delta   float64 `json:"delta,omitempty"`
	Q       float64 `json:"q,omitempty"`
	// SecAgg is a secure-aggregation round's progress.
	SecAgg *FLSecAggState `json:"secagg,omitempty"`
}

// FLSecAggState is a secure-aggregation round's stage and how many
// clients answered each stage; Dropped sent shares but no masked vector
// (their masks were removed from the others' vectors).
type FLSecAggState struct {
	Stage string `json:"stage"`
	// StageDeadline is when the current stage closes at the latest.
	StageDeadline time.Time `json:"stage_deadline,omitzero"`
	Keys          int       `json:"keys"`
	Shares        int       `json:"shares"`
	Vectors       int       `json:"vectors"`
	Unmasked      int       `json:"unmasked"`
	Dropped       []string  `json:"dropped,omitempty"`
}

// FLJobsResponse answers GET /v1/fl/jobs.
type FLJobsResponse struct {
	Jobs []FLJob `json:"jobs"`
}

// FLRoundsResponse answers GET /v1/fl/jobs/{id}/rounds.
type FLRoundsResponse struct {
	Job    FLJob     `json:"job"`
	Rounds []FLRound `json:"rounds"`
}

// FLCancelRequest is the body of POST /v1/fl/jobs/{id}/cancel.
type FLCancelRequest struct {
	Reason string `json:"reason,omitempty"`
}

// FL task kinds.
const (
	FLTaskTrain = "train"
	FLTaskStats = "stats"
)

// FLTaskDP is local differential privacy for a task: the agent clips its
// delta to L2 norm Clip and adds Gaussian noise of σ = NoiseMultiplier·Clip
// to every value before sealing it.
type FLTaskDP struct {
	Clip            float64 `json:"clip"`
	NoiseMultiplier float64 `json:"noise_multiplier"`
}

// FLTask is an agent's round task.
type FLTask struct {
	Job     string `json:"job"`
	Round   int    `json:"round"`
	Attempt int    `json:"attempt"`
	// Kind is FLTaskTrain ("" reads as train) or FLTaskStats: send the
	// examples' feature statistics instead of training (round 0).
	Kind     string          `json:"kind,omitempty"`
	Deadline time.Time       `json:"deadline"`
	Arch     fedlearn.Arch   `json:"arch"`
	Schema   fedlearn.Schema `json:"schema"`
	Labels   []string        `json:"labels"`
	// Global is the global model, flat (fedlearn.Weights.Flatten order).
	Global    []float64 `json:"global"`
	From      time.Time `json:"from,omitzero"`
	To        time.Time `json:"to,omitzero"`
	Epochs    int       `json:"epochs"`
	BatchSize int       `json:"batch_size"`
	LearnRate float64   `json:"learn_rate"`
	Solver    string    `json:"solver"`
	Mu        float64   `json:"mu,omitempty"`
	Seed      uint64    `json:"seed"`
	// DP, when set, is local differential privacy for the delta.
	DP *FLTaskDP `json:"dp,omitempty"`
	// SecAgg, when set, is the current stage of a secure-aggregation
	// round: the agent answers its message (FLUpdate.SecAgg) instead of
	// sending a delta. Only the collect stage's task carries the global
	// model (the agent trains then).
	SecAgg *FLTaskSecAgg `json:"secagg,omitempty"`
}

// FLTaskSecAgg is a stage of a secure-aggregation round (fedlearn/coord's
// stages setup, share_keys, collect, unmask) with the control plane's
// message of that stage (fedlearn/secagg's encoding).
type FLTaskSecAgg struct {
	Stage   string `json:"stage"`
	Message []byte `json:"message"`
	// MaxWeight weights the collect stage's vector: r = min(examples /
	// MaxWeight, 1) (fedlearn/secagg.Weighted).
	MaxWeight float64 `json:"max_weight"`
}

// Secure-aggregation stages (fedlearn/coord's).
const (
	FLSecAggSetup     = "setup"
	FLSecAggShareKeys = "share_keys"
	FLSecAggCollect   = "collect"
	FLSecAggUnmask    = "unmask"
)

// Step names the task and, in a secure-aggregation round, its stage: a
// new step is a new thing to answer.
func (t FLTask) Step() string {
	if t.SecAgg != nil {
		return t.Key() + "/" + t.SecAgg.Stage
	}
	return t.Key()
}

// Trains reports whether answering t needs training: a plain training
// task, or a secure-aggregation round's collect stage.
func (t FLTask) Trains() bool {
	return !t.Stats() && (t.SecAgg == nil || t.SecAgg.Stage == FLSecAggCollect)
}

// Stats reports whether t is a statistics task.
func (t FLTask) Stats() bool { return t.Kind == FLTaskStats }

// Key names the task: job, round and attempt.
func (t FLTask) Key() string { return fmt.Sprintf("%s/%d/%d", t.Job, t.Round, t.Attempt) }

// FLTaskResponse answers GET /v1/agent/fl/task: the agent's task, if it
// has one, and a cursor naming it ("" without a task).
type FLTaskResponse struct {
	Task   *FLTask `json:"task,omitempty"`
	Cursor string  `json:"cursor"`
}

// FLUpdateResult answers POST /v1/agent/fl/update.
type FLUpdateResult struct {
	Accepted bool   `json:"accepted"`
	Reason   string `json:"reason,omitempty"`
}

// FLUpdate is the plaintext of an update: a delta, or for a statistics
// task the feature statistics (Stats set, Delta empty), or in a
// secure-aggregation round the answer to the stage's message (SecAgg set,
// Examples 0).
type FLUpdate struct {
	Job      string
	Round    int
	Attempt  int
	Examples int
	Delta    []float32
	Stats    *fedlearn.FeatureStats
	SecAgg   []byte
}

const (
	flUpdateMagic = "EFLU1\n"
	flStatsMagic  = "EFLS1\n"
	flSecAggMagic = "EFLA1\n"
)

// Bounds of a decoded update.
const (
	MaxFLJobIDLen   = 64
	MaxFLUpdateDims = 1 << 24
)

// EncodeFLUpdate writes u: the magic "EFLU1\n", the job id (uint16 length
// and bytes), round, attempt (uint32), examples (uint64), the number of
// values (uint32) and the values as float32, little-endian. An update
// with Stats is "EFLS1\n", the same header, the number of features n
// (uint32) and the n counts, n sums and n sums of squares as float64 (a
// sum of thousands of readings needs more than float32's 24 bits). A
// secure-aggregation answer is "EFLA1\n", the same header with examples
// 0, the message's length in bytes and the message.
func EncodeFLUpdate(u FLUpdate) []byte {
	magic, n := flUpdateMagic, len(u.Delta)
	if u.Stats != nil {
		magic, n = flStatsMagic, len(u.Stats.Count)
	}
	if u.SecAgg != nil {
		magic, n = flSecAggMagic, len(u.SecAgg)
	}
	b := make([]byte, 0, len(magic)+2+len(u.Job)+20+24*n)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(u.Job)))
	b = append(b, u.Job...)
	b = binary.LittleEndian.AppendUint32(b, uint32(u.Round))
	b = binary.LittleEndian.AppendUint32(b, uint32(u.Attempt))
	b = binary.LittleEndian.AppendUint64(b, uint64(u.Examples))
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	if u.Stats != nil {
		for _, col := range [][]float64{u.Stats.Count, u.Stats.Sum, u.Stats.SumSq} {
			for i := range n {
				v := 0.0
				if i < len(col) {
					v = col[i]
				}
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
			}
		}
		return b
	}
	if u.SecAgg != nil {
		return append(b, u.SecAgg...)
	}
	for _, v := range u.Delta {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// DecodeFLUpdate reads EncodeFLUpdate's bytes. It checks the framing and
// the bounds, not the values (the coordinator refuses NaN and Inf, and a
// wrong number of values, with a reason).
func DecodeFLUpdate(b []byte) (FLUpdate, error) {
	var u FLUpdate
	fail := func(format string, args ...any) (FLUpdate, error) {
		return FLUpdate{}, fmt.Errorf("%w: fl update: %s", ErrBadRequest, fmt.Sprintf(format, args...))
	}
	if len(b) < len(flUpdateMagic) {
		return fail("does not start with %q, %q or %q", flUpdateMagic, flStatsMagic, flSecAggMagic)
	}
	magic := string(b[:len(flUpdateMagic)])
	if magic != flUpdateMagic && magic != flStatsMagic && magic != flSecAggMagic {
		return fail("does not start with %q, %q or %q", flUpdateMagic, flStatsMagic, flSecAggMagic)
	}
	stats, sa := magic == flStatsMagic, magic == flSecAggMagic
	b = b[len(flUpdateMagic):]
	if len(b) < 2 {
		return fail("truncated before the job id")
	}
	n := int(binary.LittleEndian.Uint16(b))
	b = b[2:]
	if n == 0 || n > MaxFLJobIDLen {
		return fail("job id of %d bytes (want 1-%d)", n, MaxFLJobIDLen)
	}
	if len(b) < n+20 {
		return fail("truncated in the header")
	}
	u.Job = string(b[:n])
	b = b[n:]
	round, attempt := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
	ex := binary.LittleEndian.Uint64(b[8:])
	dims := binary.LittleEndian.Uint32(b[16:])
	b = b[20:]
	width, minRound, limit, minEx := uint64(4), uint32(1), uint32(MaxFLUpdateDims), uint64(1)
	if stats {
		// Statistics: three float64 per feature, in round 0.
		width, minRound, limit = 24, 0, fedlearn.MaxInputs
	}
	if sa {
		// A stage message: bytes; the masked vector is the largest, 4
		// bytes a value and a header.
		width, limit, minEx = 1, 4*MaxFLUpdateDims+1024, 0
	}
	switch {
	case round < minRound || round > math.MaxInt32:
		return fail("round %d", round)
	case attempt > math.MaxInt32:
		return fail("attempt %d", attempt)
	case sa && ex != 0:
		return fail("example count %d in a secure-aggregation answer (want 0: the count is not revealed)", ex)
	case ex < minEx || ex > math.MaxInt32:
		return fail("example count %d (want 1-%d)", ex, math.MaxInt32)
	case dims > limit:
		return fail("%d values (at most %d)", dims, limit)
	case uint64(len(b)) != width*uint64(dims):
		return fail("%d values announced, %d bytes follow (want %d)", dims, len(b), width*uint64(dims))
	}
	u.Round, u.Attempt, u.Examples = int(round), int(attempt), int(ex)
	if sa {
		if dims == 0 {
			return fail("empty secure-aggregation message")
		}
		u.SecAgg = append([]byte(nil), b...)
		return u, nil
	}
	if stats {
		f := fedlearn.NewFeatureStats(int(dims))
		for k, col := range [][]float64{f.Count, f.Sum, f.SumSq} {
			for i := range col {
				col[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*(k*int(dims)+i):]))
			}
		}
		u.Stats = &f
		return u, nil
	}
	u.Delta = make([]float32, dims)
	for i := range u.Delta {
		u.Delta[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return u, nil
}

// FLUpdateAAD is the associated data an update is sealed with: it binds the
// envelope to the agent, the job, the round and the attempt.
func FLUpdateAAD(agentID, job string, round, attempt int) []byte {
	return []byte("edgefleet/fl-update/v1\x00" + agentID + "\x00" + job + "\x00" + strconv.Itoa(round) + "\x00" + strconv.Itoa(attempt))
}

// CreateFLJob creates a federated-learning job (admin) from a spec that
// encodes as fedlearn/coord.Spec's JSON.
func (c *Client) CreateFLJob(ctx context.Context, spec any) (FLJob, error) {
	var j FLJob
	err := c.do(ctx, "POST", "/v1/fl/jobs", nil, spec, &j)
	return j, err
}

// ListFLJobs lists the jobs, newest first.
func (c *Client) ListFLJobs(ctx context.Context) ([]FLJob, error) {
	var r FLJobsResponse
	err := c.do(ctx, "GET", "/v1/fl/jobs", nil, nil, &r)
	return r.Jobs, err
}

// GetFLJob describes one job.
func (c *Client) GetFLJob(ctx context.Context, id string) (FLJob, error) {
	var j FLJob
	err := c.do(ctx, "GET", "/v1/fl/jobs/"+url.PathEscape(id), nil, nil, &j)
	return j, err
}

// CancelFLJob cancels a running job (admin).
func (c *Client) CancelFLJob(ctx context.Context, id, reason string) (FLJob, error) {
	var j FLJob
	err := c.do(ctx, "POST", "/v1/fl/jobs/"+url.PathEscape(id)+"/cancel", nil, FLCancelRequest{Reason: reason}, &j)
	return j, err
}

// FLRounds lists a job's round attempts with their metrics.
func (c *Client) FLRounds(ctx context.Context, id string) (FLRoundsResponse, error) {
	var r FLRoundsResponse
	err := c.do(ctx, "GET", "/v1/fl/jobs/"+url.PathEscape(id)+"/rounds", nil, nil, &r)
	return r, err
}

// WatchFLTask asks for the agent's round task (mutual TLS). With after
// equal to the current cursor and a wait (at most MaxFLTaskWait), the
// server holds the request until the task changes or the wait ends.
func (c *Client) WatchFLTask(ctx context.Context, after string, wait time.Duration) (FLTaskResponse, error) {
	var resp FLTaskResponse
	if wait < 0 || wait > MaxFLTaskWait {
		return resp, fmt.Errorf("controlplane: client: %w: wait %s outside 0..%s", ErrBadRequest, wait, MaxFLTaskWait)
	}
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if wait == 0 {
		err := c.do(ctx, "GET", "/v1/agent/fl/task", q, nil, &resp)
		return resp, err
	}
	q.Set("wait", wait.String())
	ctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
	defer cancel()
	err := c.doWith(c.watch, ctx, "GET", "/v1/agent/fl/task", q, nil, &resp)
	return resp, err
}

// UploadFLUpdate posts a sealed update with the agent's signature over it
// (mutual TLS).
func (c *Client) UploadFLUpdate(ctx context.Context, task FLTask, envelope, signature []byte) (FLUpdateResult, error) {
	var res FLUpdateResult
	h := map[string]string{HeaderFLTask: task.Key()}
	if task.SecAgg != nil {
		h[HeaderFLStage] = task.SecAgg.Stage
	}
	if signature != nil {
		h[HeaderFLSignature] = base64.StdEncoding.EncodeToString(signature)
	}
	err := c.do(ctx, "POST", "/v1/agent/fl/update", nil, rawBody{
		data: envelope, contentType: EnvelopeContentType, header: h,
	}, &res)
	return res, err
}

// MaxFLTaskBytes bounds the JSON of a task answer an agent reads.
const MaxFLTaskBytes = 256 << 20

// Validate checks a task before an agent trains on it: a valid
// architecture, schema and labels that fit it, a finite global model of
// the architecture's size, and training parameters in range.
func (t FLTask) Validate() error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: fl task %s: %s", ErrBadRequest, t.Key(), fmt.Sprintf(format, args...))
	}
	if t.Job == "" || len(t.Job) > MaxFLJobIDLen || t.Round < 0 || t.Attempt < 0 {
		return fail("job, round or attempt out of range")
	}
	switch t.Kind {
	case "", FLTaskTrain:
		if t.Round < 1 {
			return fail("a training task of round %d", t.Round)
		}
	case FLTaskStats:
		if t.Round != 0 {
			return fail("a statistics task of round %d (want 0)", t.Round)
		}
	default:
		return fail("kind %q (want train or stats)", t.Kind)
	}
	if sa := t.SecAgg; sa != nil {
		switch {
		case t.Stats():
			return fail("a statistics task under secure aggregation")
		case sa.Stage != FLSecAggSetup && sa.Stage != FLSecAggShareKeys && sa.Stage != FLSecAggCollect && sa.Stage != FLSecAggUnmask:
			return fail("secagg stage %q (want setup, share_keys, collect or unmask)", sa.Stage)
		case len(sa.Message) == 0:
			return fail("secagg stage %s without a message", sa.Stage)
		case !(sa.MaxWeight >= 1) || math.IsInf(sa.MaxWeight, 0):
			return fail("secagg max_weight %v (want a finite number ≥ 1)", sa.MaxWeight)
		}
		if !t.Trains() {
			// The stages without training carry no model.
			return nil
		}
	}
	if d := t.DP; d != nil {
		if !(d.Clip > 0) || math.IsInf(d.Clip, 0) || !(d.NoiseMultiplier > 0) || math.IsInf(d.NoiseMultiplier, 0) {
			return fail("dp clip %v and noise multiplier %v (want finite numbers > 0)", d.Clip, d.NoiseMultiplier)
		}
	}
	if err := t.Arch.Validate(); err != nil {
		return fail("arch: %v", err)
	}
	if err := t.Schema.Validate(); err != nil {
		return fail("schema: %v", err)
	}
	if len(t.Schema.Features) != t.Arch.Inputs || len(t.Labels) != t.Arch.Classes {
		return fail("%d features and %d labels for an architecture of %d inputs and %d classes", len(t.Schema.Features), len(t.Labels), t.Arch.Inputs, t.Arch.Classes)
	}
	if n := t.Arch.NumParams(); len(t.Global) != n {
		return fail("global model has %d values, the architecture %d", len(t.Global), n)
	}
	for i, v := range t.Global {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fail("global model value %d is %v", i, v)
		}
	}
	switch {
	case t.Epochs < 1 || t.Epochs > 10000:
		return fail("epochs %d", t.Epochs)
	case t.BatchSize < 1 || t.BatchSize > fedlearn.MaxBatchSize:
		return fail("batch_size %d", t.BatchSize)
	case !(t.LearnRate > 0 && t.LearnRate <= 10):
		return fail("learn_rate %v", t.LearnRate)
	case !(t.Mu >= 0) || math.IsInf(t.Mu, 0):
		return fail("mu %v", t.Mu)
	}
	return nil
}
