package ingest

// schemaVersion is the version of the tables below, recorded in meta.
// Version 2 dropped recent_messages.epoch, version 3 added outbox.grp,
// version 4 the epochs table and outbox.epoch and outbox.eseq
// (migrations below).
const schemaVersion = 4

// migrations[v] brings a version v store to version v+1, in the
// transaction that opens it.
var migrations = map[int64][]string{
	1: {`ALTER TABLE recent_messages DROP COLUMN epoch`},
	// Rows written before grouping may have been sent alone, under their
	// own seq: they stay groups of one.
	2: {`ALTER TABLE outbox ADD COLUMN grp INTEGER NOT NULL DEFAULT 0`,
		`UPDATE outbox SET grp = seq`},
	// Rows written before epochs are the database's own: its epoch (made
	// at this migration, see Store.init) numbers them by their seq.
	3: {`ALTER TABLE outbox ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1`,
		`ALTER TABLE outbox ADD COLUMN eseq INTEGER NOT NULL DEFAULT 0`},
}

// indexes are created after the migrations (they may use columns a
// migration adds).
var indexes = []string{
	`CREATE INDEX IF NOT EXISTS outbox_grp ON outbox (grp) WHERE grp != 0`,
}

// Times are Unix microseconds (INTEGER). Device and metric names are
// stored once (devices, series) and referenced by integer id.
//
// readings and text_readings are keyed by (series, ts): that key is what
// makes re-ingesting the same reading a no-op (INSERT OR IGNORE), so the
// rows need no message identity (dead letters keep the 64-bit FNV-1a
// hash of topic and payload as msg). rollups hold per-minute (res 60) and per-hour (res
// 3600) count/sum/min/max of numeric readings, updated in the same
// transaction as the readings, so they always include every stored
// reading and outlive the raw rows. recent_messages remembers, for the
// latest messages whose readings took the receive time, a key of their
// MQTT packet id and content hash, to recognize their redelivery (see
// the package documentation).
// outbox holds the uplink's batches; AUTOINCREMENT keeps sequence
// numbers unique forever, even after acknowledged batches are deleted.
//
// epochs names the databases whose sequence numbers outbox rows carry.
// Row 1 is this database's own epoch, a random id made when the database
// was created (or migrated to schema 4): the control plane knows a batch
// by (agent, epoch, seq), so a database made anew (lost, deleted) never
// reuses the identity of a batch of the one before, though its seqs start
// again at 1. An outbox row's epoch column points into epochs (1 for the
// rows this database wrote); eseq is the row's seq in the database of its
// epoch, kept for rows imported from another database (ImportOutbox), 0
// for this database's own rows, whose seq it is.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS meta (
		key   TEXT PRIMARY KEY,
		value INTEGER NOT NULL
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS devices (
		id         INTEGER PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		first_seen INTEGER NOT NULL,
		last_seen  INTEGER NOT NULL,
		messages   INTEGER NOT NULL DEFAULT 0,
		readings   INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE TABLE IF NOT EXISTS series (
		id         INTEGER PRIMARY KEY,
		device     INTEGER NOT NULL REFERENCES devices(id),
		metric     TEXT NOT NULL,
		unit       TEXT NOT NULL,
		kind       INTEGER NOT NULL,
		last_ts    INTEGER,
		last_value REAL,
		last_text  BLOB,
		UNIQUE (device, metric)
	)`,
	`CREATE TABLE IF NOT EXISTS readings (
		series INTEGER NOT NULL,
		ts     INTEGER NOT NULL,
		value  REAL NOT NULL,
		PRIMARY KEY (series, ts)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS text_readings (
		series INTEGER NOT NULL,
		ts     INTEGER NOT NULL,
		kind   INTEGER NOT NULL,
		value  BLOB NOT NULL,
		PRIMARY KEY (series, ts)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS rollups (
		res    INTEGER NOT NULL,
		series INTEGER NOT NULL,
		bucket INTEGER NOT NULL,
		count  INTEGER NOT NULL,
		sum    REAL NOT NULL,
		min    REAL NOT NULL,
		max    REAL NOT NULL,
		PRIMARY KEY (res, series, bucket)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS recent_messages (
		seq   INTEGER PRIMARY KEY,
		key   INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS recent_messages_key ON recent_messages (key)`,
	`CREATE TABLE IF NOT EXISTS dead_letters (
		id           INTEGER PRIMARY KEY AUTOINCREMENT,
		at           INTEGER NOT NULL,
		topic        TEXT NOT NULL,
		reason       TEXT NOT NULL,
		error        TEXT NOT NULL,
		payload      BLOB NOT NULL,
		payload_size INTEGER NOT NULL,
		msg          INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS outbox (
		seq           INTEGER PRIMARY KEY AUTOINCREMENT,
		kind          INTEGER NOT NULL,
		created       INTEGER NOT NULL,
		readings      INTEGER NOT NULL,
		min_ts        INTEGER NOT NULL,
		max_ts        INTEGER NOT NULL,
		bytes         INTEGER NOT NULL,
		claimed_until INTEGER NOT NULL DEFAULT 0,
		payload       BLOB NOT NULL,
		grp           INTEGER NOT NULL DEFAULT 0,
		epoch         INTEGER NOT NULL DEFAULT 1,
		eseq          INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE TABLE IF NOT EXISTS epochs (
		id    INTEGER PRIMARY KEY,
		epoch TEXT NOT NULL UNIQUE
	)`,
}

// Counters kept in meta, updated in the transactions that change them.
const (
	metaSchema          = "schema_version"
	metaRawReadings     = "raw_readings"            // rows in readings
	metaTextReadings    = "text_readings"           // rows in text_readings
	metaDeadLetters     = "dead_letters"            // rows in dead_letters
	metaDeadEvicted     = "dead_letters_evicted"    // dead letters deleted by the count or age bound
	metaDuplicates      = "duplicate_readings"      // readings ignored as already stored
	metaDupMessages     = "duplicate_messages"      // redelivered receive-time messages skipped
	metaRetainedAge     = "raw_deleted_age"         // raw readings deleted by age
	metaRetainedSize    = "raw_deleted_size"        // raw readings deleted by the size bound
	metaOutboxEvicted   = "outbox_evicted_readings" // raw readings replaced by rollups in the outbox
	metaOutboxRollups   = "outbox_rollup_batches"   // rollup batches created by outbox eviction
	metaMessages        = "messages"                // messages committed (stored or dead-lettered)
	metaStoredReadings  = "stored_readings_total"   // readings ever stored
	metaOutboxAcked     = "outbox_acked_batches"    // batches acknowledged by the uplink
	metaOutboxAckedRead = "outbox_acked_readings"   // readings in acknowledged batches
)

var metaKeys = []string{
	metaRawReadings, metaTextReadings, metaDeadLetters, metaDeadEvicted, metaDuplicates,
	metaDupMessages, metaRetainedAge, metaRetainedSize, metaOutboxEvicted, metaOutboxRollups,
	metaMessages, metaStoredReadings, metaOutboxAcked, metaOutboxAckedRead,
}
