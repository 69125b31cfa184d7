// Package ingest is the agent's device-data ingestion engine: an MQTT
// subscriber (paho, QoS 1, persistent session), payload decoders (SenML
// JSON and flat JSON), a SQLite store with group commit, rollups,
// retention, dead letters and an outbox for the uplink, and an embedded
// broker for installations without one.
//
// # Flow
//
// The subscriber hands each message to Ingestor.Handle, which queues it.
// A batcher decodes queued messages into a batch and offers it to the
// committer Config.BatchDelay after its first message (or at once when
// it holds Config.BatchMessages); while the committer is busy the batch
// keeps growing, so under load commits get larger instead of queueing
// up. The committer writes each batch in one SQLite transaction (WAL,
// synchronous=FULL; checkpoints run in the background, off this path);
// an acknowledging goroutine then sends the batch's PUBACKs, in arrival
// order, and tells the Sink and the DeviceObserver. A message is
// therefore acknowledged only once its readings, or its dead letter, are
// on disk; a crash before that leaves it unacknowledged and the broker
// delivers it again.
//
// The broker's in-flight window for the agent's client (mosquitto
// max_inflight_messages, default 20) bounds how many messages arrive
// before the first acknowledgement. Because acknowledgements wait for a
// commit, a window smaller than BatchMessages caps batches at the window
// and throughput at one window per commit: give the agent's broker a
// window of at least 2 × BatchMessages (or 0, no limit) and a queue
// (max_queued_messages) sized for the backlog to keep while the agent is
// away.
//
// # Embedded broker
//
// Without a broker of its own, an installation runs one in the agent's
// process (StartBroker with BrokerConfig.Ingest, and Config.Embedded).
// The Ingestor then has no MQTT session: the broker hands every publish
// on its topics straight to Handle (a mochi OnPublish hook) and sends a
// device's PUBACK only from the acknowledging goroutine, after the
// group commit holding the message, exactly as the subscriber would.
// Whatever a device saw acknowledged is on disk, whatever happens to
// the process afterwards (kill -9, power loss); the rest the device
// still holds and sends again, flagged DUP, after it reconnects; a copy
// of a publish whose packet id is still in flight on its connection is
// dropped (see ingestHook). Devices pipeline their QoS 1 messages (mochi's
// receive maximum bounds MQTT 5 clients); a full queue stops reading
// the publishing connections. Until an Ingestor is attached, and after
// it stops, the broker reads no further publishes, so it acknowledges
// nothing no Ingestor took; the other subscribers of the telemetry
// topics still receive it (after it is queued for commit).
//
// # Payloads
//
// Topics follow a pattern (default devices/{device_id}/telemetry); the
// device id comes from the topic. A payload that is a JSON array is a
// SenML pack (RFC 8428): base name, time, unit, value and sum and the
// record fields n, u, v, vs, vb, vd, s, t, ut resolve as the RFC says,
// including times below 2^28 being relative to the receive time; a
// SenML version above 10 or a field ending in "_" (must-understand) is
// refused. A payload that is a JSON object is flat: every field is a
// metric holding a number (or a boolean, stored as 0 or 1) except "ts",
// the time of all its readings, in Unix seconds (possibly fractional) or
// RFC 3339; without it the readings take the receive time.
//
// Value kinds: numbers and booleans (0 and 1) go to the numeric time
// series and its rollups. Strings (vs) and data (vd, base64url, stored
// decoded) go to a text table beside it under the same key, travel in
// the outbox, and have no rollups. A record's sum (s) becomes a numeric
// reading of metric name + ":sum".
//
// Validation, with Limits: payload size, record count, names (RFC 8428
// characters, length), units, string length, finite numbers (a number
// that overflows float64, or a base plus value that does, is refused),
// and times within [receive time − MaxPast, receive time + MaxFuture].
// A message failing any rule is refused whole.
//
// # Dead letters
//
// A refused message (bad topic, size, syntax, types, names, times,
// values) is committed as a dead letter, in the same transaction as the
// valid messages of its batch, with its receive time, topic, reason,
// error and payload (the first MaxDeadLetterPayload bytes; the full size
// is kept), and counted in edgefleet_ingest_dead_letters_total{reason}.
// It is then acknowledged like any committed message, so bad input
// never stalls the stream. A failure of the storage itself (disk full,
// I/O error, database locked or read-only: SQLite's FULL, IOERR, BUSY,
// LOCKED, READONLY, CANTOPEN and the like) is never the message's fault:
// the batch is retried whole, unacknowledged, under backpressure, until
// a commit succeeds. A message that decodes but that the store keeps
// refusing for another reason is dead-lettered (reason store_error):
// after three failed attempts a batch is committed message by message,
// so one such message cannot hold back the others. Store.DeadLetters pages through them;
// Store.PurgeDeadLetters deletes them. Past MaxDeadLetters or
// DeadLetterMaxAge the oldest are deleted and counted
// (edgefleet_ingest_dead_letters_evicted_total): never silently.
//
// # De-duplication
//
// MQTT QoS 1 is at-least-once: a message whose acknowledgement was lost
// (crash after commit, connection loss) arrives again, with the DUP
// flag, the same payload and packet id, on a later connection. Two
// mechanisms make that harmless:
//
//   - Readings are unique by (device, metric, time): the tables' primary
//     key, with INSERT OR IGNORE. This is exact and needs no window: a
//     redelivered message with timestamps is a no-op however late it
//     comes, and it also absorbs duplicates MQTT cannot flag (a
//     publisher retrying, a replay). It is the right key because a
//     device measures a metric once at a given time; a second value for
//     the same key is refused as a duplicate (the first wins).
//   - Readings that take the receive time (flat JSON without "ts",
//     SenML relative times) would get a new time on redelivery, so the
//     key cannot catch them. For these messages the store keeps a key of
//     (packet id, content hash) for the last DedupMessages of them; a
//     DUP message whose key was committed within that window (or earlier
//     in the same group commit) is skipped. A hash of the content alone
//     would be wrong: devices that send no time often send identical
//     payloads (a door still closed), which are distinct readings. The
//     packet id separates them: a packet id is reused only after its
//     message was acknowledged, and a reused id comes without DUP, so it
//     is never looked up. Only DUP messages are; a window well under the
//     65535 packet ids keeps an id reused long ago from matching. The
//     DUP message may come on the same connection as the first copy:
//     paho, after a reconnect, can send a queued publish twice (from its
//     session store and from its send queue). What remains: a DUP
//     message never delivered before (some brokers, mochi among them,
//     mark queued messages DUP) whose content and packet id equal those
//     of a message within the window is taken for a redelivery, and a
//     publisher retrying a receive-time message under a new packet id is
//     stored twice. Devices that need exactly-once should send times.
//
// Receive times are made strictly increasing per device (by a
// microsecond where two messages arrive within one), so receive-stamped
// readings of distinct messages never collide on the key.
//
// # Storage, rollups and retention
//
// Times are stored in Unix microseconds. Every commit also updates
// per-minute and per-hour rollups (count, sum, min, max) of the numeric
// readings it stored, so rollups always include every stored reading.
// Retention (Store.Retain, every Config.RetentionInterval) deletes raw
// readings older than RawMaxAge, then the oldest raw readings while the
// database's used size exceeds MaxBytes, then minute and hour rollups
// past their own, longer, ages, and old dead letters. Deletion runs in
// small transactions so ingestion continues meanwhile.
//
// # Outbox
//
// Each commit that stores readings writes one outbox row holding them,
// under a sequence number that is never reused. The uplink claims
// batches with a lease (Store.ClaimOutbox): a batch gathers consecutive
// rows, up to OutboxConfig.GroupReadings readings, the first time they
// are claimed, and keeps those rows and the first row's sequence number
// from then on. The uplink sends them and acknowledges them
// (Store.AckOutbox); a batch whose lease runs out is offered again, the
// same, so delivery is at-least-once and the receiver de-duplicates by
// (agent, epoch, sequence). The epoch is a random id made with the
// database (Store.Epoch): a database made anew, whose sequence numbers
// start again at 1, numbers its batches in a new epoch, so none of them
// is taken for a batch of the database before. Rows of another database
// can be imported with their epoch and numbers (Store.ImportOutbox, for
// a salvage). The outbox is bounded by OutboxConfig.MaxBytes: past
// it, raw rows never claimed whose readings all precede the current minute
// are replaced, oldest first, by batches of per-minute rollups of their
// numeric readings (their strings and data are carried over): raw
// readings older than their rollups go first. Replaced readings are
// counted (edgefleet_ingest_outbox_evicted_readings_total,
// StoreStats.OutboxEvicted) and logged.
//
// # Post-commit observers
//
// A Sink gets each commit's new readings in the order they arrived,
// although the commit writes a batch's numeric readings grouped by
// series: a consumer that follows each device's readings in time (the
// model runtime predicts for a device's reading time once the next
// reading is of another device or time) would otherwise see a device's
// later readings of one metric before its earlier readings of another.
//
// A Tap is a Sink that copies the numeric readings of the metrics it is
// given into a bounded queue for a consumer on another goroutine (the
// model runtime). It never blocks the commit path: when its queue is
// full it drops the oldest readings and counts them.
//
// # Backpressure
//
// When the outbox stays over its bound after eviction, or the database
// grows past StoreConfig.HighWaterBytes, the committer stops committing
// and therefore acknowledging (edgefleet_ingest_backpressure{reason}=1).
// The queue then fills, the subscriber's handler blocks, paho stops
// reading the socket, and the broker's in-flight window throttles the
// publishers. Nothing is dropped: every message received and not
// acknowledged stays with the broker. Ingestion resumes below 90% of the
// bound. A failing disk holds ingestion the same way while commits are
// retried: reason "disk_full" when SQLite reports the disk full, "error"
// for other failures of the storage. Before the disk fills, ingestion
// holds back while the store's file system has less than
// Config.MinFreeBytes free (reason "disk_full", gauge
// edgefleet_ingest_disk_free_bytes), and resumes once a tenth more is
// free. Each change of state is logged once.
package ingest
