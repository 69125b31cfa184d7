package cpapi

import "time"

// Role is the permission level of an operator API token.
type Role string

// Roles, from least to most privileged. A role may do everything the roles
// below it may do.
const (
	// RoleViewer may read the registry, telemetry and audit log.
	RoleViewer Role = "viewer"
	// RoleOperator may also create enrollment tokens, edit labels and
	// decommission agents.
	RoleOperator Role = "operator"
	// RoleAdmin may also create, list and revoke API tokens.
	RoleAdmin Role = "admin"
)

func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// Allows reports whether a token with role r may perform a call that needs
// role need.
func (r Role) Allows(need Role) bool { return r.Valid() && r.rank() >= need.rank() }

// AgentState is the registry's view of an agent, derived from the time of
// its last heartbeat.
type AgentState string

// Agent states.
const (
	// StateOnline means the last heartbeat is more recent than
	// controlplane.Config.StaleAfter.
	StateOnline AgentState = "online"
	// StateStale means the last heartbeat is older than controlplane.Config.StaleAfter but
	// more recent than controlplane.Config.OfflineAfter.
	StateStale AgentState = "stale"
	// StateOffline means no heartbeat for controlplane.Config.OfflineAfter or longer.
	StateOffline AgentState = "offline"
	// StateDecommissioned means the agent was decommissioned; its
	// certificate is revoked.
	StateDecommissioned AgentState = "decommissioned"
)

// Health is the agent's own assessment, sent with each heartbeat.
type Health struct {
	// Status is "ok", "degraded" or "failing".
	Status string `json:"status"`
	// Checks maps a check name to a short result ("ok" or an explanation).
	Checks map[string]string `json:"checks,omitempty"`
	// Incidents are the databases the agent found corrupt and quarantined
	// since it started (an agent with incidents reports "degraded").
	Incidents []DBIncident `json:"incidents,omitempty"`
}

// DBIncident is a database an agent found corrupt at start (quick_check)
// or in use, quarantined (renamed, kept) and replaced.
type DBIncident struct {
	// DB is "state" (replicated state, rebuilt from peers) or "ingest"
	// (ingestion database, salvaged).
	DB string `json:"db"`
	// File is the database's path; QuarantinedAs the name it was moved to.
	File          string `json:"file"`
	QuarantinedAs string `json:"quarantined_as"`
	// At is when it was quarantined.
	At time.Time `json:"at"`
	// Reason is what found it (quick_check's first problems, or the error).
	Reason string `json:"reason"`
	// Salvaged and Lost count the rows of an ingestion database copied
	// into the new one and those lost (readings: the damaged database's
	// counters minus those copied, -1 when unknown; outbox: estimated from
	// sequence-number gaps).
	SalvagedReadings int64 `json:"salvaged_readings,omitempty"`
	LostReadings     int64 `json:"lost_readings,omitempty"`
	SalvagedOutbox   int64 `json:"salvaged_outbox_batches,omitempty"`
	LostOutbox       int64 `json:"lost_outbox_batches,omitempty"`
	// Status is "rebuilding" while a state database is being rebuilt
	// from peers, then "rebuilt"; "salvaged" for an ingestion database.
	Status string `json:"status"`
}

// Resources is the agent's resource status, sent with each heartbeat.
type Resources struct {
	CPUPercent     float64 `json:"cpu_percent"`
	Load1          float64 `json:"load1,omitempty"`
	MemUsedBytes   uint64  `json:"mem_used_bytes"`
	MemTotalBytes  uint64  `json:"mem_total_bytes"`
	DiskUsedBytes  uint64  `json:"disk_used_bytes"`
	DiskTotalBytes uint64  `json:"disk_total_bytes"`
	UptimeSeconds  uint64  `json:"uptime_seconds"`
	// Energy is the agent's grid zone, its carbon intensity and the
	// battery, when the agent knows them (optional).
	Energy *Energy `json:"energy,omitempty"`
}

// Energy is an agent's energy situation, sent with its heartbeat's
// resources: what carbon-aware scheduling of federated rounds selects on.
type Energy struct {
	// Zone is the grid zone the agent draws power from ("" unknown).
	Zone string `json:"zone,omitempty"`
	// Intensity is the zone's carbon intensity now, gCO2eq/kWh, when
	// known; IntensityAt its time; IntensityStale when it is the
	// provider's last good value after a failure.
	Intensity      *float64   `json:"intensity,omitempty"`
	IntensityAt    *time.Time `json:"intensity_at,omitempty"`
	IntensityStale bool       `json:"intensity_stale,omitempty"`
	// Battery is the battery state when known: Present false for a
	// mains-powered device; Level 0..1; Charging on external power.
	Battery *Battery `json:"battery,omitempty"`
}

// Battery is an agent's battery state.
type Battery struct {
	Present  bool    `json:"present"`
	Level    float64 `json:"level"`
	Charging bool    `json:"charging"`
}

// Heartbeat is what an agent reports about itself periodically.
type Heartbeat struct {
	// Name, Version, OS and Arch replace the registry's values when not
	// empty.
	Name      string     `json:"name,omitempty"`
	Version   string     `json:"version,omitempty"`
	OS        string     `json:"os,omitempty"`
	Arch      string     `json:"arch,omitempty"`
	Health    *Health    `json:"health,omitempty"`
	Resources *Resources `json:"resources,omitempty"`
}

// HeartbeatResponse is the server's answer to a heartbeat.
type HeartbeatResponse struct {
	AgentID string            `json:"agent_id"`
	Labels  map[string]string `json:"labels"`
	// ServerTime lets the agent estimate its clock offset.
	ServerTime time.Time `json:"server_time"`
	// HeartbeatIntervalSeconds is the interval the server expects.
	HeartbeatIntervalSeconds float64 `json:"heartbeat_interval_seconds"`
}

// Agent is one enrolled agent in the registry.
type Agent struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Version string            `json:"version"`
	OS      string            `json:"os"`
	Arch    string            `json:"arch"`
	// State is derived from LastSeen when the record is read.
	State     AgentState `json:"state"`
	FirstSeen time.Time  `json:"first_seen"`
	LastSeen  time.Time  `json:"last_seen"`
	Health    *Health    `json:"health,omitempty"`
	Resources *Resources `json:"resources,omitempty"`
	// CertSerial is the hexadecimal serial number of the agent's client
	// certificate.
	CertSerial   string    `json:"cert_serial"`
	CertNotAfter time.Time `json:"cert_not_after"`
	// XWingPublic and MLDSAPublic are the agent's post-quantum public keys
	// (X-Wing KEM and ML-DSA), if it sent them at enrollment. They are
	// filled by GetAgent only, not by listings.
	XWingPublic       []byte     `json:"xwing_public,omitempty"`
	MLDSAPublic       []byte     `json:"mldsa_public,omitempty"`
	EnrollmentTokenID string     `json:"enrollment_token_id"`
	DecommissionedAt  *time.Time `json:"decommissioned_at,omitempty"`
}

// EnrollmentToken is a single-use, expiring credential that lets one agent
// enroll. Only the SHA-256 digest of its secret is stored.
type EnrollmentToken struct {
	ID        string            `json:"id"`
	Hash      string            `json:"-"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by"`
	ExpiresAt time.Time         `json:"expires_at"`
	UsedAt    *time.Time        `json:"used_at,omitempty"`
	UsedBy    string            `json:"used_by,omitempty"`
	// State is "unused", "used" or "expired"; derived when read.
	State string `json:"state"`
}

// APIToken is an operator credential. Only the SHA-256 digest of its secret
// is stored.
type APIToken struct {
	ID        string     `json:"id"`
	Hash      string     `json:"-"`
	Name      string     `json:"name"`
	Role      Role       `json:"role"`
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// AuditRecord is one link of the hash-chained audit log.
type AuditRecord struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Target   string    `json:"target"`
	Result   string    `json:"result"`
	PrevHash string    `json:"prev_hash"`
	Hash     string    `json:"hash"`
}

// Reading is one telemetry value.
type Reading struct {
	Device string    `json:"device"`
	Metric string    `json:"metric"`
	TS     time.Time `json:"ts"`
	Value  float64   `json:"value"`
}

// TelemetryBatch is one upload from an agent. (agent id, Epoch, BatchSeq)
// is its identity: Epoch names the agent's ingestion database (a random id
// made with it, see ValidEpoch), BatchSeq numbers the batches of that
// database. A batch whose identity was already stored with the same
// readings is a retry and is not stored again; with other readings it is
// refused (ErrBatchConflict).
type TelemetryBatch struct {
	BatchSeq uint64    `json:"batch_seq"`
	Epoch    string    `json:"epoch"`
	Readings []Reading `json:"readings"`
}

// IngestResult is the outcome of storing a telemetry batch.
type IngestResult struct {
	BatchSeq uint64 `json:"batch_seq"`
	// Accepted is the number of readings stored (0 for a duplicate).
	Accepted int `json:"accepted"`
	// Duplicate is true when the batch had already been stored.
	Duplicate bool `json:"duplicate"`
}

// TelemetryQuery selects readings. Empty Agent, Device or Metric match all.
// From is inclusive, To exclusive. A zero Bucket returns raw points;
// otherwise readings are grouped into buckets of that width aligned to the
// Unix epoch.
type TelemetryQuery struct {
	Agent  string
	Device string
	Metric string
	From   time.Time
	To     time.Time
	Bucket time.Duration
	// Limit caps the number of raw points returned over all series.
	Limit int
}

// Point is one raw reading in a query answer.
type Point struct {
	TS    time.Time `json:"ts"`
	Value float64   `json:"value"`
}

// Bucket summarises the readings of one series in [Start, Start+bucket).
type Bucket struct {
	Start time.Time `json:"start"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Avg   float64   `json:"avg"`
	Count int64     `json:"count"`
}

// Series is the answer for one (agent, device, metric).
type Series struct {
	Agent   string   `json:"agent"`
	Device  string   `json:"device"`
	Metric  string   `json:"metric"`
	Points  []Point  `json:"points,omitempty"`
	Buckets []Bucket `json:"buckets,omitempty"`
}

// TelemetryResult is the answer to a telemetry query.
type TelemetryResult struct {
	From          time.Time `json:"from"`
	To            time.Time `json:"to"`
	BucketSeconds float64   `json:"bucket_seconds,omitempty"`
	Series        []Series  `json:"series"`
	// Truncated is true when raw points were cut at the limit.
	Truncated bool `json:"truncated,omitempty"`
}
