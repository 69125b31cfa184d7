package agentapi

import (
	"bytes"
	"encoding/json"
	"time"
)

// The wire types below are the JSON the agent's local API answers: the
// server (package agent/localapi) encodes these very types, converting
// the agent's domain types (device records, ingestion and uplink stats,
// members) to them in one place (localapi/wire.go). This package stays
// stdlib-only, so a client need not import the agent; a test decodes
// every endpoint's real answer into them with unknown fields disallowed.

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// Health is the answer of GET /healthz.
type Health struct {
	Status string `json:"status"` // "ok"
}

// Ready is the answer of GET /readyz when the agent is ready.
type Ready struct {
	Status  string `json:"status"`  // "ready"
	Members int    `json:"members"` // members alive, itself included
	// Degraded, when set, says what the agent lost while serving again
	// (a database quarantined, see agent.Readiness).
	Degraded string `json:"degraded,omitempty"`
}

// Collection is one collection of GET /v1/state.
type Collection struct {
	Name string `json:"name"`
	Type string `json:"type"` // lww, orset, counter or mvreg
	Keys int    `json:"keys"` // live keys (elements of an OR-set)
}

// Collection types (state.collections of the agent's config).
const (
	TypeLWW     = "lww"
	TypeORSet   = "orset"
	TypeCounter = "counter"
	TypeMVReg   = "mvreg"
)

// Listing is the answer of GET /v1/state/{collection}; which of Entries,
// Members, Counters and Registers is set depends on Type. The one set is
// never nil in an answer (an empty collection lists []), the others are
// (and absent).
type Listing struct {
	Collection string     `json:"collection"`
	Type       string     `json:"type"`
	Entries    []Entry    `json:"entries,omitzero"`   // lww
	Members    []string   `json:"members,omitzero"`   // orset
	Counters   []Counter  `json:"counters,omitzero"`  // counter
	Registers  []Register `json:"registers,omitzero"` // mvreg
}

// Entry is one key of a last-writer-wins collection.
type Entry struct {
	Key string `json:"key"`
	// Value is the stored value: JSON as stored, other UTF-8 text as a
	// JSON string, anything else as a base64 string (Encoding "base64").
	Value    json.RawMessage `json:"value"`
	Encoding string          `json:"encoding,omitempty"`
	HLC      string          `json:"hlc"`
	Origin   string          `json:"origin"`
}

// Counter is one counter of a counter collection.
type Counter struct {
	Key   string `json:"key"`
	Value int64  `json:"value"`
}

// Register is one multi-value register: its concurrent values (siblings),
// newest first. Each is a value as Entry.Value renders it, except binary
// values, which are {"value": base64, "encoding": "base64"} objects.
type Register struct {
	Key    string            `json:"key"`
	Values []json.RawMessage `json:"values"`
}

// Item is the answer of GET /v1/state/{collection}/{key}. Its shape
// depends on the collection's type: lww sets Value, Encoding, HLC and
// Origin; counter sets Value (a JSON number); mvreg sets Values; orset
// sets Present.
type Item struct {
	Key      string            `json:"key"`
	Value    json.RawMessage   `json:"value,omitempty"`
	Encoding string            `json:"encoding,omitempty"`
	HLC      string            `json:"hlc,omitempty"`
	Origin   string            `json:"origin,omitempty"`
	Values   []json.RawMessage `json:"values,omitempty"`
	Present  *bool             `json:"present,omitempty"`
}

// WriteResult is the answer of PUT and DELETE /v1/state/{collection}/{key}:
// the op committed durably as Seq of Origin.
type WriteResult struct {
	Collection string `json:"collection"`
	Key        string `json:"key"`
	Type       string `json:"type"`
	Origin     string `json:"origin"`
	Seq        uint64 `json:"seq"`
}

// Member is one member of GET /v1/members.
type Member struct {
	Name  string   `json:"name"`
	Addr  string   `json:"addr"` // gossip address host:port
	State string   `json:"state"`
	Meta  NodeMeta `json:"meta"`
}

// Member states.
const (
	StateAlive = "alive"
	StateDead  = "dead"
	StateLeft  = "left"
)

// NodeMeta is what a member advertises about itself.
type NodeMeta struct {
	ID      string            `json:"id"`
	Version string            `json:"version"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// DeviceRecord is a device's entry in the fleet's replicated device
// registry (GET /v1/devices and /v1/devices/{id}).
type DeviceRecord struct {
	ID         string             `json:"id"`
	Agent      string             `json:"agent"` // node name of the agent that ingests from it
	FirstSeen  time.Time          `json:"first_seen"`
	LastSeen   time.Time          `json:"last_seen"`
	Messages   int64              `json:"messages"`
	Readings   int64              `json:"readings"`
	Rate       float64            `json:"rate"` // messages per second
	LastValues map[string]float64 `json:"last_values"`
	Updated    time.Time          `json:"updated"`
}

// DeviceList is the answer of GET /v1/devices.
type DeviceList struct {
	Devices []DeviceRecord `json:"devices"`
}

// CommandSent is the answer of POST /v1/devices/{id}/commands.
type CommandSent struct {
	Device string `json:"device"`
	Topic  string `json:"topic"`
	Bytes  int    `json:"bytes"`
}

// DeadLetter is a message the agent received but could not ingest.
type DeadLetter struct {
	ID          int64     `json:"id"`
	At          time.Time `json:"at"` // receive time
	Topic       string    `json:"topic"`
	Reason      string    `json:"reason"`
	Error       string    `json:"error"`
	Payload     []byte    `json:"payload"`      // the first 4096 bytes
	PayloadSize int       `json:"payload_size"` // the payload's full size
	Truncated   bool      `json:"truncated"`
}

// DeadLetterPage is the answer of GET /v1/dead-letters; Next is the id to
// continue after, 0 on the last page.
type DeadLetterPage struct {
	Items []DeadLetter `json:"items"`
	Next  int64        `json:"next"`
}

// PurgeResult is the answer of DELETE /v1/dead-letters.
type PurgeResult struct {
	Purged int64 `json:"purged"`
}

// IngestStatus is the answer of GET /v1/ingest; only Enabled is set when
// ingestion is off.
type IngestStatus struct {
	Enabled    bool              `json:"enabled"`
	Broker     string            `json:"broker,omitempty"`
	Embedded   bool              `json:"embedded,omitempty"`
	Topic      string            `json:"topic,omitempty"`
	Subscribed bool              `json:"subscribed"`
	Pressure   string            `json:"pressure"` // why acknowledgements are held back: "", "store", "outbox", "disk_full" or "error"
	Stats      *IngestStats      `json:"stats,omitempty"`
	Store      *IngestStoreStats `json:"store,omitempty"`
	StoreError string            `json:"store_error,omitempty"`
}

// MarshalJSON encodes a disabled ingestion as {"enabled":false}.
func (s IngestStatus) MarshalJSON() ([]byte, error) {
	if !s.Enabled {
		return []byte(`{"enabled":false}`), nil
	}
	type plain IngestStatus
	return marshalRaw(plain(s))
}

// marshalRaw encodes v as the agent does: without escaping <, > and &.
func marshalRaw(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// IngestStats are the ingestor's counters.
type IngestStats struct {
	Received     int64  `json:"received"`      // messages received
	Acked        int64  `json:"acked"`         // acknowledged after their commit
	Pending      int64  `json:"pending"`       // received, not yet acknowledged: the backlog
	Commits      int64  `json:"commits"`       // group commits
	CommitErrors int64  `json:"commit_errors"` // failed (retried) commits
	Connected    bool   `json:"connected"`     // MQTT session up
	Published    int64  `json:"published"`     // commands published and acknowledged by the broker
	Copies       int64  `json:"inflight_copies"`
	Backpressure string `json:"backpressure"`
	// DiskFreeBytes is free on the ingestion database's file system (-1:
	// unknown); below MinFreeBytes (-1: not enforced) ingestion holds back.
	DiskFreeBytes int64 `json:"disk_free_bytes"`
	MinFreeBytes  int64 `json:"min_free_bytes"`
}

// IngestStoreStats describe the ingestion database and its outbox.
type IngestStoreStats struct {
	Readings             int64  `json:"readings"`
	TextReadings         int64  `json:"text_readings"`
	DeadLetters          int64  `json:"dead_letters"`
	Devices              int64  `json:"devices"`
	Series               int64  `json:"series"`
	Messages             int64  `json:"messages"`
	StoredTotal          int64  `json:"stored_total"`
	DuplicateReadings    int64  `json:"duplicate_readings"`
	DuplicateMessages    int64  `json:"duplicate_messages"`
	DeadLettersEvicted   int64  `json:"dead_letters_evicted"`
	RetentionDeletedAge  int64  `json:"retention_deleted_age"`
	RetentionDeletedSize int64  `json:"retention_deleted_size"`
	OutboxPending        int64  `json:"outbox_pending"` // readings waiting for the uplink
	OutboxPendingBatches int64  `json:"outbox_pending_batches"`
	OutboxPendingBytes   int64  `json:"outbox_pending_bytes"`
	OutboxEvicted        int64  `json:"outbox_evicted"`
	OutboxRollupBatches  int64  `json:"outbox_rollup_batches"`
	OutboxAckedBatches   int64  `json:"outbox_acked_batches"`
	OutboxAckedReadings  int64  `json:"outbox_acked_readings"`
	UsedBytes            int64  `json:"used_bytes"`
	Backpressure         string `json:"backpressure,omitempty"`
}

// UplinkStatus is the answer of GET /v1/uplink; only Enabled (false) is
// set without a control plane.
type UplinkStatus struct {
	Enabled             bool              `json:"enabled"`
	Enrolled            bool              `json:"enrolled"`
	Decommissioned      bool              `json:"decommissioned"`
	AgentID             string            `json:"agent_id"`
	Server              string            `json:"server"`
	Breaker             string            `json:"breaker"` // closed, open or half-open
	ConsecutiveFailures int               `json:"consecutive_failures"`
	LastHeartbeat       time.Time         `json:"last_heartbeat"`
	LastUpload          time.Time         `json:"last_upload"`
	LastError           string            `json:"last_error,omitempty"`
	Heartbeats          int64             `json:"heartbeats"`
	UploadedBatches     int64             `json:"uploaded_batches"`
	UploadedReadings    int64             `json:"uploaded_readings"`
	DuplicateBatches    int64             `json:"duplicate_batches"`
	ConflictBatches     int64             `json:"conflict_batches"` // refused as conflicts (409), kept in the outbox
	SkippedReadings     int64             `json:"skipped_readings"`
	SealTelemetry       bool              `json:"seal_telemetry"`
	UploadsWaiting      string            `json:"uploads_waiting,omitempty"`
	KeysSealed          bool              `json:"keys_sealed"`
	KeyVersions         map[string]uint32 `json:"key_versions,omitempty"`
	LastKeyFetch        time.Time         `json:"last_key_fetch"`
}

// MarshalJSON encodes a disabled uplink as {"enabled":false}.
func (s UplinkStatus) MarshalJSON() ([]byte, error) {
	if !s.Enabled {
		return []byte(`{"enabled":false}`), nil
	}
	type plain UplinkStatus
	return marshalRaw(plain(s))
}

// Status is the answer of GET /v1/status: the agent at a glance. The
// ingestion rate comes from two answers (see IngestRate). Model and
// scheduler state are not reported yet.
type Status struct {
	Node          string        `json:"node"`
	Version       string        `json:"version"`
	Running       bool          `json:"running"`
	At            time.Time     `json:"at"` // when the status was taken, on the agent's clock
	StartedAt     time.Time     `json:"started_at"`
	UptimeSeconds float64       `json:"uptime_seconds"`
	Health        *AgentHealth  `json:"health"` // nil while not running
	Members       StatusMembers `json:"members"`
	Ingest        IngestStatus  `json:"ingest"`
	Uplink        UplinkStatus  `json:"uplink"`
	Keys          StatusKeys    `json:"keys"`
}

// AgentHealth is the result of the agent's health checks (as sent in its
// heartbeats).
type AgentHealth struct {
	Status string            `json:"status"` // ok, degraded or failing
	Checks map[string]string `json:"checks,omitempty"`
	// Incidents are the databases found corrupt and quarantined since the
	// agent started.
	Incidents []DBIncident `json:"incidents,omitempty"`
}

// DBIncident is a database the agent found corrupt, quarantined (renamed,
// kept) and replaced (the heartbeat's cpapi.DBIncident).
type DBIncident struct {
	DB               string    `json:"db"` // state or ingest
	File             string    `json:"file"`
	QuarantinedAs    string    `json:"quarantined_as"`
	At               time.Time `json:"at"`
	Reason           string    `json:"reason"`
	SalvagedReadings int64     `json:"salvaged_readings,omitempty"`
	LostReadings     int64     `json:"lost_readings,omitempty"` // -1: unknown
	SalvagedOutbox   int64     `json:"salvaged_outbox_batches,omitempty"`
	LostOutbox       int64     `json:"lost_outbox_batches,omitempty"`
	Status           string    `json:"status"` // rebuilding, rebuilt or salvaged
}

// StatusMembers counts the members the agent knows by state, and lists
// them.
type StatusMembers struct {
	Alive int      `json:"alive"`
	Dead  int      `json:"dead"`
	Left  int      `json:"left"`
	List  []Member `json:"list"`
}

// StatusKeys are the key versions the agent holds.
type StatusKeys struct {
	Held   []HeldKey     `json:"held"`
	Gossip GossipKeyring `json:"gossip"`
}

// HeldKey is one key of the agent's keyring (no material).
type HeldKey struct {
	Name     string   `json:"name"`
	Purpose  string   `json:"purpose"`
	Primary  uint32   `json:"primary"`
	Versions []uint32 `json:"versions"`
}

// GossipKeyring describes the keyring gossip is encrypted with: the dkms
// versions installed, the primary (0: the bootstrap key), and whether the
// bootstrap key is still installed.
type GossipKeyring struct {
	Encrypted bool     `json:"encrypted"`
	Primary   uint32   `json:"primary"`
	Versions  []uint32 `json:"versions"`
	Bootstrap bool     `json:"bootstrap"`
}

// IngestRate is the messages per second the agent received between two
// status answers, prev taken before cur; ok is false when they do not
// allow one (no ingestion, no time between them, or the agent restarted).
func IngestRate(prev, cur Status) (rate float64, ok bool) {
	if prev.Ingest.Stats == nil || cur.Ingest.Stats == nil || !prev.StartedAt.Equal(cur.StartedAt) {
		return 0, false
	}
	dt := cur.At.Sub(prev.At).Seconds()
	dn := cur.Ingest.Stats.Received - prev.Ingest.Stats.Received
	if dt <= 0 || dn < 0 {
		return 0, false
	}
	return float64(dn) / dt, true
}
