package controlplane

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// AuditEntry is what a caller supplies to append to the audit log; the store
// assigns the sequence number and chain hashes.
type AuditEntry struct {
	Time   time.Time
	Actor  string
	Action string
	Target string
	Result string
}

// Store is the control plane's persistent state. Methods that change state
// and take an AuditEntry append that entry to the audit log in the same
// transaction, so a change and its record are written together or not at
// all. Implementations must be safe for concurrent use.
type Store interface {
	// CreateEnrollmentTokens stores new enrollment tokens.
	CreateEnrollmentTokens(ctx context.Context, tokens []cpapi.EnrollmentToken, audit AuditEntry) error
	// ListEnrollmentTokens returns all enrollment tokens, newest first,
	// with State derived at now.
	ListEnrollmentTokens(ctx context.Context, now time.Time) ([]cpapi.EnrollmentToken, error)
	// LookupEnrollmentToken finds a token by the SHA-256 digest of its
	// secret; ErrNotFound if there is none.
	LookupEnrollmentToken(ctx context.Context, hash string) (cpapi.EnrollmentToken, error)
	// EnrollAgent consumes the enrollment token tokenID and inserts agent
	// and the certificate it was issued (certPEM), atomically. It fails
	// with ErrTokenUsed or ErrTokenExpired (at now) and then writes
	// nothing.
	EnrollAgent(ctx context.Context, tokenID string, agent cpapi.Agent, certPEM string, now time.Time, audit AuditEntry) error
	// LookupEnrollment returns the agent enrolled with token tokenID and
	// its certificate (PEM); ErrNotFound if the token was not used, or was
	// used before enrollments were recorded.
	LookupEnrollment(ctx context.Context, tokenID string) (agentID, certPEM string, err error)

	// GetAgent returns one agent, including its public keys.
	GetAgent(ctx context.Context, id string) (cpapi.Agent, error)
	// ListAgents returns every agent ordered by id, without public keys.
	// State is left empty; the server derives it.
	ListAgents(ctx context.Context) ([]cpapi.Agent, error)
	// RecordHeartbeat updates last_seen and the reported fields. It fails
	// with ErrNotFound or ErrDecommissioned.
	RecordHeartbeat(ctx context.Context, id string, hb cpapi.Heartbeat, at time.Time) (cpapi.Agent, error)
	// UpdateAgentLabels sets and removes labels of a live agent.
	UpdateAgentLabels(ctx context.Context, id string, set map[string]string, remove []string, audit AuditEntry) (cpapi.Agent, error)
	// DecommissionAgent marks the agent decommissioned and revokes its
	// certificate serial. It fails with ErrDecommissioned if it already was.
	DecommissionAgent(ctx context.Context, id string, at time.Time, audit AuditEntry) (cpapi.Agent, error)
	// RevokedSerials returns the serial numbers of every revoked client
	// certificate.
	RevokedSerials(ctx context.Context) ([]string, error)

	// IngestTelemetry stores a batch unless its identity (agentID,
	// batch.Epoch, batch.BatchSeq) was stored before: with the same
	// readings (by digest) it reports Duplicate and writes nothing, with
	// other readings it returns an error wrapping cpapi.ErrBatchConflict
	// and writes nothing.
	IngestTelemetry(ctx context.Context, agentID string, batch cpapi.TelemetryBatch, receivedAt time.Time) (cpapi.IngestResult, error)
	// QueryTelemetry answers a telemetry query.
	QueryTelemetry(ctx context.Context, q cpapi.TelemetryQuery) (cpapi.TelemetryResult, error)

	// CreateAPIToken stores a new operator token.
	CreateAPIToken(ctx context.Context, tok cpapi.APIToken, audit AuditEntry) error
	// ListAPITokens returns every operator token, newest first.
	ListAPITokens(ctx context.Context) ([]cpapi.APIToken, error)
	// LookupAPIToken finds a token by the SHA-256 digest of its secret.
	LookupAPIToken(ctx context.Context, hash string) (cpapi.APIToken, error)
	// RevokeAPIToken marks a token revoked.
	RevokeAPIToken(ctx context.Context, id string, at time.Time, audit AuditEntry) (cpapi.APIToken, error)

	// ChangeDevice applies change to the identity of device id (found
	// false and a zero identity when it has none) and stores its result
	// under the next sequence number, with the audit record, in one
	// transaction; an error from change is returned as is, nothing
	// written.
	ChangeDevice(ctx context.Context, id string, change func(cur cpapi.DeviceIdentity, found bool) (cpapi.DeviceIdentity, error), audit AuditEntry) (cpapi.DeviceIdentity, error)
	// GetDevice returns one identity; cpapi.ErrNotFound if there is none.
	GetDevice(ctx context.Context, id string) (cpapi.DeviceIdentity, error)
	// DevicesAfter returns the identities changed after sequence number
	// after, in sequence order, at most limit (0: all), and the highest
	// sequence number stored.
	DevicesAfter(ctx context.Context, after int64, limit int) ([]cpapi.DeviceIdentity, int64, error)

	// PutModel stores a signed model file described by m. The same name
	// and version stored before with the same digest is not stored again
	// (created false, nothing written, audit included); with another
	// digest it fails with cpapi.ErrConflict.
	PutModel(ctx context.Context, m cpapi.Model, file []byte, audit AuditEntry) (created bool, err error)
	// ListModels returns every stored model version, by name and push time.
	ListModels(ctx context.Context) ([]cpapi.Model, error)
	// GetModel describes one version; cpapi.ErrNotFound if there is none.
	GetModel(ctx context.Context, name, version string) (cpapi.Model, error)
	// ModelFile returns the signed file of one version.
	ModelFile(ctx context.Context, name, version string) ([]byte, error)
	// DeployModel pushes d on the deployment stack of (d.Name,
	// d.Selector), unless d.Version is already active there (changed
	// false, nothing written). cpapi.ErrNotFound if the version is not
	// stored.
	DeployModel(ctx context.Context, d cpapi.ModelDeployment, audit AuditEntry) (out cpapi.ModelDeployment, changed bool, err error)
	// RollbackModel marks the active deployment of (name, selector) rolled
	// back and returns it with the deployment active after it.
	// cpapi.ErrNotFound if nothing is deployed there, cpapi.ErrConflict
	// if there is no earlier deployment to return to.
	RollbackModel(ctx context.Context, name, selector string, at time.Time, by string, audit AuditEntry) (rolledBack, active cpapi.ModelDeployment, err error)
	// UndeployModel marks every deployment of (name, selector) not rolled
	// back yet rolled back, ending the deployment there, and returns them
	// newest first. cpapi.ErrNotFound if nothing is deployed there.
	UndeployModel(ctx context.Context, name, selector string, at time.Time, by string, audit AuditEntry) ([]cpapi.ModelDeployment, error)
	// ModelDeployments returns the deployments of name ("" for every
	// name), newest first; only the active ones when activeOnly.
	ModelDeployments(ctx context.Context, name string, activeOnly bool) ([]cpapi.ModelDeployment, error)

	// SaveFL writes a change of a federated-learning job atomically
	// (FLSave); an update stored before for the same job, round, attempt
	// and agent fails with cpapi.ErrConflict and writes nothing.
	SaveFL(ctx context.Context, f FLSave) error
	// FLJobs returns every job with its coordinator state, newest first.
	FLJobs(ctx context.Context) ([]cpapi.FLJob, [][]byte, error)
	// FLRounds returns a job's stored round attempts in order.
	FLRounds(ctx context.Context, job string) ([]cpapi.FLRound, error)
	// FLGlobal returns the global model after an aggregated round.
	FLGlobal(ctx context.Context, job string, round int) ([]float64, error)
	// FLUpdates returns the accepted updates of one round attempt, sealed.
	FLUpdates(ctx context.Context, job string, round, attempt int) ([]FLStoredUpdate, error)

	// AppendAudit appends one record on its own.
	AppendAudit(ctx context.Context, e AuditEntry) (cpapi.AuditRecord, error)
	// ListAudit returns up to limit records with seq > afterSeq, in order.
	ListAudit(ctx context.Context, afterSeq int64, limit int) ([]cpapi.AuditRecord, error)
	// AuditHead returns the sequence number and hash of the newest record
	// as recorded separately from the log itself (0 and the genesis hash
	// when empty), so that removing the newest records is detectable.
	AuditHead(ctx context.Context) (seq int64, hash string, err error)

	// Close releases the store.
	Close() error
}
