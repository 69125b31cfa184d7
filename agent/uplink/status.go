package uplink

import (
	"time"
)

// Status is the uplink's state, as served by the agent's GET /v1/uplink.
type Status struct {
	// Enabled is false when no control plane is configured.
	Enabled bool `json:"enabled"`
	// Enrolled is true once the agent holds its identity.
	Enrolled bool `json:"enrolled"`
	// Decommissioned is true while the control plane refuses the agent's
	// certificate (decommissioned or revoked).
	Decommissioned bool   `json:"decommissioned"`
	AgentID        string `json:"agent_id"`
	Server         string `json:"server"`
	// Breaker is closed, open or half-open.
	Breaker             string `json:"breaker"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
	// LastHeartbeat is when the last acknowledged heartbeat was sent.
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// LastUpload is when an outbox batch was last delivered.
	LastUpload time.Time `json:"last_upload"`
	// LastError is the latest error not yet followed by a success of the
	// same kind of request.
	LastError  string `json:"last_error,omitempty"`
	Heartbeats int64  `json:"heartbeats"`
	// UploadedBatches counts outbox batches delivered and acknowledged,
	// DuplicateBatches those of them the control plane already had (a
	// retry), UploadedReadings the readings it stored.
	UploadedBatches  int64 `json:"uploaded_batches"`
	UploadedReadings int64 `json:"uploaded_readings"`
	DuplicateBatches int64 `json:"duplicate_batches"`
	// ConflictBatches counts uploads the control plane refused as
	// conflicts (409: it holds other readings under the batch's
	// identity); such a batch stays in the outbox, never acknowledged,
	// and LastError holds the refusal's reason.
	ConflictBatches int64 `json:"conflict_batches"`
	// SkippedReadings counts outbox readings not uploaded (strings and
	// data, and values the control plane would refuse).
	SkippedReadings int64 `json:"skipped_readings"`
	// SealTelemetry is true when uploads are sealed (seal_telemetry).
	SealTelemetry bool `json:"seal_telemetry"`
	// UploadsWaiting says why uploads wait in the outbox ("" while they
	// flow): no telemetry key yet, or the control plane's key service is
	// sealed.
	UploadsWaiting string `json:"uploads_waiting,omitempty"`
	// KeysSealed is true while the control plane's key service answers
	// that it is sealed.
	KeysSealed bool `json:"keys_sealed"`
	// KeyVersions maps each key the agent holds to its primary version.
	KeyVersions map[string]uint32 `json:"key_versions,omitempty"`
	// LastKeyFetch is when key messages were last fetched.
	LastKeyFetch time.Time `json:"last_key_fetch"`
}

type opError struct {
	msg string
	at  time.Time
	seq int64
}

// Status returns the uplink's current state.
func (u *Uplink) Status() Status {
	st := Status{Enabled: u.cfg.Enabled()}
	if !st.Enabled {
		return st
	}
	st.Server = u.cfg.URL
	st.Breaker, st.ConsecutiveFailures = u.br.snapshot()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.id != nil {
		st.Enrolled, st.AgentID = true, u.id.AgentID
	}
	st.Decommissioned = u.decommissioned
	st.LastHeartbeat, st.LastUpload = u.lastHB, u.lastUpload
	var latest opError
	for _, e := range u.errs {
		if e.seq > latest.seq {
			latest = e
		}
	}
	st.LastError = latest.msg
	st.Heartbeats = u.heartbeats
	st.UploadedBatches, st.UploadedReadings, st.DuplicateBatches = u.upBatches, u.upReadings, u.dupBatches
	st.ConflictBatches = u.conflicts
	st.SkippedReadings = u.skipped
	st.SealTelemetry = u.cfg.Seals()
	st.UploadsWaiting, st.KeysSealed, st.LastKeyFetch = u.waiting, u.keysSealed, u.lastKeyFetch
	st.KeyVersions = keyVersions(u.keys)
	return st
}

// setError records err as the latest error of op.
func (u *Uplink) setError(op string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var max int64
	for _, e := range u.errs {
		max = maxInt(max, e.seq)
	}
	u.errs[op] = opError{msg: err.Error(), at: u.clock.Now(), seq: max + 1}
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// succeeded clears op's error and, since the control plane accepted the
// agent's certificate, the decommissioned state.
func (u *Uplink) succeeded(op string, agentCall bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.errs, op)
	if agentCall && u.decommissioned {
		u.decommissioned = false
		u.m.decommiss.Set(0)
		u.log.Info("control plane accepts the agent's certificate again")
	}
}

// refused records a 401/403 on an agent call: the agent was
// decommissioned or its certificate revoked.
func (u *Uplink) refused(op string, err error) {
	u.setError(op, err)
	u.mu.Lock()
	first := !u.decommissioned
	u.decommissioned = true
	id := ""
	if u.id != nil {
		id = u.id.AgentID
	}
	u.mu.Unlock()
	u.m.decommiss.Set(1)
	if first {
		u.log.Error("control plane refuses this agent: decommissioned or certificate revoked; "+
			"heartbeats and uploads now retry only every backoff_max, telemetry stays in the outbox. "+
			"To enroll again, move the identity folder aside and configure a new enrollment token",
			"agent_id", id, "identity_dir", u.idDir, "retry_every", u.cfg.BackoffMax, "err", err)
	}
}
