// Package uplink is the agent's side of the control plane: enrollment,
// heartbeats and telemetry upload, built to leave the agent working
// unchanged while the control plane is away.
//
// # Identity
//
// Without a stored identity, Start generates an ECDSA P-256 key on the
// agent (DataDir/controlplane/agent-key.pem, mode 0600, written before it
// is used), sends a CSR with the enrollment token over TLS verified with
// ca_file, and stores the answer atomically: the CA bundle (ca.pem), the
// client certificate (agent.pem), then identity.json (agent_id, server,
// enrolled_at, keys_verifying_key: see Keys). A restarted agent loads
// them and never enrolls again; the
// token is not needed any more. Enrollment runs in the background:
// network errors and 5xx answers are retried with back-off, with the same
// key and X-Wing key (both stored before the first attempt, so a restart
// between attempts does not change them): the control plane answers a
// retry of an enrollment whose answer was lost with the same agent id and
// certificate (controlplane.Config.EnrollRetryWindow). A refused
// token (unknown, used, expired: 401 or 409) is logged as an error,
// reported in Status.LastError and not retried until the token file
// changes. The agent runs on meanwhile.
//
// # Keys
//
// The agent's Keyring (Deps.Keyring; the agent keeps it sealed at rest
// under its device key) supplies the X-Wing public key sent at
// enrollment, so the control plane can seal key versions to the agent.
// The enrollment answer's keys_verifying_key, the control plane's
// ML-DSA-65 key that signs key messages, is pinned in identity.json; an
// agent enrolled before it was sent fetches it once (GET
// /v1/keys/verifying-key, over mutual TLS). Once both are known the
// keyring is opened (at Start for an enrolled agent), and a key watch loop,
// separate from the heartbeats, fetches the key messages that are new
// since its cursor (GET /v1/agent/keys) and hands each to the keyring,
// which verifies it (signature, addressee, validity, replay, rollback).
// The fetch is a long poll (wait = key_watch_wait, default 55s, bounded
// by key_watch_wait + request_timeout): the control plane holds it until
// the agent's key state changes, so a new version (a gossip key that
// becomes primary install_grace after its creation) reaches the keyring
// within a round trip. While the breaker is not closed, and against a
// control plane that refuses "wait", keys are fetched without waiting
// once per acknowledged heartbeat. The cursor moves only when every
// message was accepted, so a refused one is fetched again after the next
// heartbeat; the cursor lives in memory, so a restarted agent fetches
// everything once. A failed fetch, and a sealed key service (503, not
// counted as a failure; Status.KeysSealed), are asked again after the
// next acknowledged heartbeat; a heartbeat failing at the network level
// aborts the held request. An agent enrolled without an X-Wing key gets
// 409, logged once. Deps.KeysChanged runs, on the key watch loop, after
// every fetch that accepted at least one message. After every
// acknowledged heartbeat, once its own keys were fetched, the agent
// fetches a page of the key relay (Deps.KeyRelay). Status.KeyVersions
// names the primary version of
// every key held, Status.LastKeyFetch the last fetch.
//
// # Sealed uploads
//
// With seal_telemetry (the default), each request's body, the gzip JSON
// of a cpapi.TelemetryBatch, is sealed into a pqcrypto envelope
// under the primary version the agent holds of the key "telemetry", with
// cpapi.TelemetryAAD(agent id, epoch, batch_seq) as associated data, and
// sent as application/vnd.edgefleet.envelope. It is sealed anew on every
// attempt, so a retry after a rotation goes out under the new version;
// the control plane recognizes it by epoch and batch_seq as before, and still opens
// envelopes under decrypt-only versions. Until the agent holds a
// telemetry key (the key service is sealed, or has not sent it yet), no
// batch is claimed and nothing is sent: Status.UploadsWaiting says why,
// and the key's arrival wakes the uploader. An upload answered 503 by a
// sealed key service is given back to the outbox and retried with
// back-off, without counting against the breaker. seal_telemetry: false
// sends plain gzip JSON as before (control planes without a key service,
// agents enrolled without an X-Wing key).
//
// # Requests
//
// Every request goes over mutual TLS (TLS 1.3) and is bounded by
// request_timeout. A circuit breaker shared by all requests opens after
// breaker_failures consecutive failures (network errors, timeouts, 5xx,
// 408, 429); while open, nothing is sent; after breaker_cooldown one
// probe goes through (half-open), and its success closes the breaker and
// wakes both loops. After a failure each loop waits a random time in
// [backoff_min, min(backoff_max, backoff_min × 2^(n-1))] for its n-th
// failure in a row. A 401 or 403 once enrolled means the agent was
// decommissioned or its certificate revoked: Status.Decommissioned is
// set, an error is logged once, and requests are retried only every
// backoff_max.
//
// # Heartbeats
//
// Heartbeats go every heartbeat_interval, or the interval the server
// asks for (its default 10s), carrying Deps.Status (health, resources),
// with name, version, OS and architecture filled in.
//
// # Uploads
//
// The uploader claims up to upload_batches outbox batches with a lease
// ((upload_batches + 2) × request_timeout: after a crash the batches of
// the interrupted round are offered again once it ends) and sends them
// one per request, as gzip-compressed JSON (cpapi.TelemetryBatch),
// acknowledging each in the outbox once the server answered; a batch the
// server already had (a retry) is acknowledged too. A batch gathers the
// group commits (outbox rows) written since the last round, up to 1,000
// readings (ingest.OutboxConfig.GroupReadings); it is formed when first claimed and keeps its rows and its
// identity (OutboxBatch.Epoch and EpochSeq: the ingestion database's
// epoch and the first row's seq) on every retry, sent as epoch and
// batch_seq, so an identity is never reused for other readings, not even
// by a database made anew: a retry is recognized and stored once,
// delivery is at-least-once and storage exactly-once. Should the control
// plane hold other readings under a batch's identity, it refuses the
// upload (409, cpapi.ErrBatchConflict): the batch stays in the outbox,
// never acknowledged, offered again when its lease ends; the refusal is
// logged at ERROR with its reason, counted
// (edgefleet_uplink_batch_conflicts_total, Status.ConflictBatches) and
// shown in Status.LastError. A commit wakes the uploader
// (Committed, the ingest.Sink), which waits until upload_linger has
// passed since its last round, so that one request carries the commits
// of that time; it polls every upload_interval anyway. A batch too
// large for one request (over 5,000 readings or about 768 KiB of JSON)
// is sent in parts numbered 1<<62 | EpochSeq<<16 | part, the same parts on
// every retry. A network failure ends the
// round and gives its batches back (ReleaseOutbox); a batch the server
// refuses (400, 413) stays in the outbox, leased: it is offered again
// when its lease ends; the round goes on, and the next one waits a
// back-off. Batches are claimed one at a time, so only the one being
// sent is held in memory.
//
// What is uploaded: numbers, and booleans as 0 and 1, as readings.
// Strings and data have no place in the control plane's numeric store
// and are skipped (counted in Status.SkippedReadings and
// edgefleet_uplink_readings_skipped_total{reason="text"}), as are
// readings it would refuse: names over 200 bytes or with control
// characters, non-finite values, times before 2000 or from 2200. A
// rollup (outbox batches that replaced old readings when the outbox was
// full) is sent as four readings at its bucket start, on the metrics
// <metric>:min_1m, <metric>:max_1m, <metric>:avg_1m and
// <metric>:count_1m (_1h for hour rollups; see RollupMetric).
//
// # Metrics
//
// On Deps.Registry: edgefleet_uplink_breaker_state (0 closed, 1
// half-open, 2 open), edgefleet_uplink_requests_total{op,result} (op
// enroll, heartbeat, upload; result ok, duplicate, failed, rejected,
// unauthorized, canceled), edgefleet_uplink_request_seconds{op},
// edgefleet_uplink_batches_uploaded_total,
// edgefleet_uplink_batch_conflicts_total,
// edgefleet_uplink_readings_uploaded_total,
// edgefleet_uplink_readings_skipped_total{reason},
// edgefleet_uplink_enrolled and edgefleet_uplink_decommissioned. The
// keyring counts accepted and refused key messages by reason itself
// (dkms_agent_key_messages_total{result}: accepted, bad_signature,
// replay, rollback, expired, ...).
//
// # Time
//
// Intervals, back-off and the breaker run on Deps.Clock, so tests use a
// clock.Manual and the simulator a scaled clock (clock.NewScaled) to play
// an hour-long outage in a minute. Request timeouts are real time.
package uplink
