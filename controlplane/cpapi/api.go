package cpapi

import (
	"time"
)

// Wire types of the HTTP API that are not registry records themselves.

// CreateEnrollmentTokensRequest is the body of POST /v1/enrollment-tokens.
type CreateEnrollmentTokensRequest struct {
	// TTL is a Go duration ("1h", "30m"); default 1h, at most
	// controlplane.Config.MaxEnrollmentTTL.
	TTL string `json:"ttl,omitempty"`
	// Labels are given to every agent enrolled with these tokens.
	Labels map[string]string `json:"labels,omitempty"`
	// Count is how many single-use tokens to make (default 1, at most
	// MaxEnrollmentTokensPerRequest).
	Count int `json:"count,omitempty"`
}

// MaxEnrollmentTokensPerRequest bounds CreateEnrollmentTokensRequest.Count.
const MaxEnrollmentTokensPerRequest = 1000

// NewEnrollmentToken is an enrollment token with its secret, shown only in
// the answer to its creation.
type NewEnrollmentToken struct {
	EnrollmentToken
	Token string `json:"token"`
}

// EnrollmentTokensResponse answers the creation of enrollment tokens.
type EnrollmentTokensResponse struct {
	Tokens []NewEnrollmentToken `json:"tokens"`
}

// EnrollmentTokenList lists enrollment tokens (without secrets).
type EnrollmentTokenList struct {
	Tokens []EnrollmentToken `json:"tokens"`
}

// EnrollRequest is the body of POST /v1/enroll.
type EnrollRequest struct {
	// Token is the enrollment token secret.
	Token string `json:"token"`
	// CSR is a PEM certificate signing request for the agent's own key.
	CSR string `json:"csr"`
	// Name is a human name for the agent (default: its id).
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	OS      string `json:"os,omitempty"`
	Arch    string `json:"arch,omitempty"`
	// XWingPublic is the agent's X-Wing KEM public key (1216 bytes,
	// base64 in JSON), optional.
	XWingPublic []byte `json:"xwing_public,omitempty"`
	// MLDSAPublic is the agent's ML-DSA-44, -65 or -87 public key (base64 in
	// JSON), optional.
	MLDSAPublic []byte `json:"mldsa_public,omitempty"`
}

// EnrollResponse is the answer to a successful enrollment.
type EnrollResponse struct {
	AgentID string `json:"agent_id"`
	// Certificate is the agent's client certificate (PEM).
	Certificate string `json:"certificate"`
	// CABundle is the control plane CA certificate (PEM), to verify the
	// server from now on.
	CABundle                 string            `json:"ca_bundle"`
	Labels                   map[string]string `json:"labels"`
	HeartbeatIntervalSeconds float64           `json:"heartbeat_interval_seconds"`
	// KeysVerifyingKey is the ML-DSA-65 public key that signs key
	// messages (GET /v1/agent/keys); the agent pins it
	// (dkms.AgentConfig.ControlPlaneKey, pqcrypto.ParseVerifyingKey).
	KeysVerifyingKey []byte `json:"keys_verifying_key,omitempty"`
}

// AgentsResponse lists agents.
type AgentsResponse struct {
	Agents []Agent `json:"agents"`
}

// LabelsPatch is the body of PATCH /v1/agents/{id}/labels: keys in Set are
// set, keys in Remove deleted (removal first).
type LabelsPatch struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// CreateAPITokenRequest is the body of POST /v1/tokens.
type CreateAPITokenRequest struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// TTL is a Go duration; empty means the token does not expire.
	TTL string `json:"ttl,omitempty"`
}

// NewAPIToken is an API token with its secret, shown only in the answer to
// its creation.
type NewAPIToken struct {
	APIToken
	Token string `json:"token"`
}

// APITokensResponse lists API tokens.
type APITokensResponse struct {
	Tokens []APIToken `json:"tokens"`
}

// AuditResponse is a page of the audit log.
type AuditResponse struct {
	Records []AuditRecord `json:"records"`
	// HeadSeq is the newest sequence number.
	HeadSeq int64 `json:"head_seq"`
}

// ServerStatus is the answer of GET /v1/server/status.
type ServerStatus struct {
	Version       string    `json:"version"`
	StartedAt     time.Time `json:"started_at"`
	Now           time.Time `json:"now"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// RSSBytes is the server process's resident set size (VmRSS from
	// /proc/self/status; 0 where unavailable).
	RSSBytes int64 `json:"rss_bytes"`
	// HeapBytes, StackBytes and GoSysBytes are the Go runtime's heap in
	// use, goroutine stacks in use, and total memory obtained from the OS.
	HeapBytes  uint64 `json:"heap_bytes"`
	StackBytes uint64 `json:"stack_bytes"`
	GoSysBytes uint64 `json:"go_sys_bytes"`
	Goroutines int    `json:"goroutines"`
	// CPUSeconds is the user plus system CPU time the server process has
	// used since it started.
	CPUSeconds float64 `json:"cpu_seconds"`
	// Agents counts agents by state.
	Agents                   map[AgentState]int `json:"agents"`
	TotalAgents              int                `json:"total_agents"`
	HeartbeatIntervalSeconds float64            `json:"heartbeat_interval_seconds"`
}
