// Package models is the agent's model runtime: it holds the models the
// control plane deploys to this agent, runs them on the readings
// ingestion commits, publishes and stores their predictions, and answers
// predictions asked through the local API.
//
// # Installing
//
// Manager.Install takes a model file as the control plane sends it
// (fedlearn's model file format, signed with the control plane's
// ML-DSA-65 key) and refuses it, with an *InstallError naming the reason
// and what was wrong, unless: it decodes (not truncated or corrupted),
// its digest matches its content, its signature verifies with the
// control plane's key the agent pinned at enrollment (or
// models.verifying_key_file), its architecture, weights (all finite),
// feature schema (one feature per input) and labels (one per class) fit
// together, and, when the agent has seen devices, at least one of them
// sends every metric the schema reads ("schema does not match the
// device's metrics"). Only then is the file written to
// DataDir/models/NAME.model (a temporary file, fsync, rename, fsync of
// the directory) and the new version swapped in: lookups read an atomic
// pointer and never wait. On any failure the version serving before
// keeps serving; the failure is logged and counted
// (edgefleet_model_install_failures_total{reason}). At start, Load reads
// the deployed files and verifies each again (the devices check aside:
// devices come and go); a file that fails is renamed NAME.model.refused
// and does not serve; a later good install of that name deletes it.
// Manager.Remove stops serving a model and deletes its file (the uplink
// calls it when the control plane no longer assigns a model that came
// from it: one whose signature verifies with the control plane's pinned
// key; models signed only by models.verifying_key_file's key are left
// alone). Inference uses fedlearn.Forward, the light forward
// pass, so nothing of gorgonia runs on the ingestion path.
//
// # Which devices a model serves
//
// A model runs for a device once the device has sent every metric the
// model's features read (the runtime holds a reading of each), and then
// once for every distinct reading time of that device that carries at
// least one of those metrics: a flat JSON message with its readings at
// one "ts" gives one prediction per model. The prediction's features are
// fedlearn.Schema.Extract over the device's recent readings at that time
// (readings after it are ignored), imputed and standardised as the
// schema says: the same code builds training examples, so a model sees
// the same features in training and in service. Non-finite readings are
// not used. The windows hold the readings committed while a model reads
// their metric: after a model is deployed, or the agent restarts, a
// windowed feature sees only the readings since then until its window
// has passed (they are not read back from the ingestion database).
//
// # From commit to prediction
//
// Ingestion tells its sinks about each group commit after acknowledging
// its messages. One of them, an ingest.Tap, copies the commit's numeric
// readings of the metrics some deployed model reads into a bounded queue
// and returns: it never blocks and never waits for inference, so
// inference cannot delay an MQTT acknowledgement. When the queue is full
// the oldest readings are dropped, counted in
// edgefleet_inference_dropped_readings_total (they are stored; only
// their predictions may be lost): drop-oldest, not coalescing, so every
// reading that survives keeps its own prediction. One goroutine
// (Runtime.Run) drains the queue, updates each device's window of recent
// readings, predicts, then publishes and stores the round's predictions.
//
// Memory is bounded: the queue (models.queue_readings readings of 48
// bytes), the windows (models.max_devices devices, the least recently
// seen evicted and counted; per device and metric at most
// models.max_points readings, and only as far back as the longest window
// of a feature reading it; a metric read only as "latest" keeps one),
// the predictions in flight to the broker (OutboxConfig.MaxInFlight,
// models.publish_max_in_flight) and one stored round the outbox reads,
// and the predictions database (models.predictions_max_rows and
// predictions_max_age): a backlog waits on disk, not in memory.
//
// # Publishing and storing
//
// Every prediction is stored in DataDir/predictions.db, a round (one
// drained batch) per row, and numbered in the order stored (its sequence
// number). The database is the outbox of devices/{device_id}/inference:
// an Outbox reads the stored predictions not yet published, in order,
// and publishes each at QoS 1:
//
//	{"id":"1796623200000000-42","model":"comfort","version":"3",
//	 "device":"room-1","class":{"index":1,"label":"stuffy"},
//	 "probabilities":[0.12,0.88],"time":"2026-12-07T06:00:00.5Z"}
//
// time is the reading's time; probabilities are in class order; id is
// the database's creation time (Unix µs) and the sequence number, the
// same each time the prediction is sent. With the embedded broker it is
// handed over in process; with an external broker it goes on a
// connection of its own (ingest.Publisher). At most
// models.publish_max_in_flight are unacknowledged; the outbox records
// (at most every 250 ms, and when it catches up) the sequence number
// through which the broker acknowledged them without a gap. A publish
// refused (broker away), failed, or not acknowledged within 10 s, counted
// in edgefleet_inference_publish_failures_total, makes it send again from
// the oldest unacknowledged prediction after a pause (100 ms doubling to
// 5 s); after a restart it starts after the recorded mark.
//
// Delivery is therefore at least once: a prediction sent but not yet
// recorded as acknowledged (a restart, a connection lost with messages in
// flight) is sent again with the same id; consumers de-duplicate by
// (device, id). Order is the store's while nothing fails; a prediction
// sent again may arrive after later ones.
//
// Retention: predictions_max_age deletes only published predictions. The
// count bound (predictions_max_rows) deletes the oldest rounds whether
// published or not: it bounds the disk while the broker stays away, and
// the unpublished predictions it deletes are counted in
// edgefleet_inference_unpublished_dropped_total and never sent. With
// models.publish false nothing waits to be published.
//
// # Metrics
//
// edgefleet_inference_predictions_total{model},
// edgefleet_inference_latency_seconds (feature extraction, normalisation
// and forward pass of one prediction on an arriving reading),
// edgefleet_model_info{model,version,digest},
// edgefleet_model_install_failures_total{reason},
// edgefleet_inference_dropped_readings_total,
// edgefleet_inference_published_total,
// edgefleet_inference_publish_failures_total,
// edgefleet_inference_publish_backlog,
// edgefleet_inference_unpublished_dropped_total,
// edgefleet_inference_store_failures_total,
// edgefleet_inference_devices_evicted_total.
package models
