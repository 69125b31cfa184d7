package agent

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// IngestConfig configures device-data ingestion (package agent/ingest):
// the MQTT subscriber, the ingestion database (DataDir/ingest.db) and the
// device registry in replicated state.
type IngestConfig struct {
	// Enabled turns ingestion on. Default true.
	Enabled bool `yaml:"enabled"`
	// MQTT configures the broker connection (or the embedded broker).
	MQTT MQTTConfig `yaml:"mqtt"`
	// Broker configures the embedded broker: whom it admits, TLS, limits
	// (config_broker.go).
	Broker EmbeddedBrokerConfig `yaml:"broker"`
	// Topic maps topics to device ids; exactly one level is {device_id}.
	// The agent subscribes to it with that level replaced by "+". Default
	// "devices/{device_id}/telemetry".
	Topic string `yaml:"topic"`
	// BatchMessages is the most messages one group commit holds. Default
	// 1000. An external broker's in-flight window for the agent should
	// exceed it (see package agent/ingest).
	BatchMessages int `yaml:"batch_messages"`
	// BatchDelay is how long a group commit waits for more messages after
	// its first one. Longer means fewer, larger commits (fewer syncs to
	// the disk, less CPU) and a longer wait for the acknowledgement.
	// Default 5ms.
	BatchDelay time.Duration `yaml:"batch_delay"`
	// QueueMessages bounds received messages waiting to be committed;
	// when full the agent stops reading from the broker. Each holds its
	// message and decoded readings in memory while it waits, and a commit
	// that stalls on the disk fills the queue: this bounds the memory of
	// a stall. At least batch_messages. Default 1000.
	QueueMessages int `yaml:"queue_messages"`
	// Limits bound each message; a message breaking one is dead-lettered.
	Limits IngestLimits `yaml:"limits"`
	// Retention bounds what the ingestion database keeps.
	Retention IngestRetention `yaml:"retention"`
	// OutboxMaxBytes bounds the telemetry waiting for the control plane;
	// past it the oldest raw readings are replaced by per-minute rollups,
	// then ingestion is held back. Default 268435456 (256 MiB). Without a
	// control plane no outbox is kept.
	OutboxMaxBytes int64 `yaml:"outbox_max_bytes"`
	// HighWaterBytes is the database size above which ingestion is held
	// back (acknowledgements stop, the broker keeps the messages) until
	// retention brings it below 90%. Default 805306368 (768 MiB).
	HighWaterBytes int64 `yaml:"high_water_bytes"`
	// MinFreeBytes is the space kept free on the data directory's file
	// system: below it ingestion is held back (acknowledgements stop, the
	// broker keeps the messages; /v1/ingest and the metrics show
	// backpressure "disk_full") until a tenth more is free, so the
	// database, its WAL and the replicated state keep room to work. 0
	// turns the check off (a disk that fills still holds ingestion back,
	// never dead-letters a message). Default 33554432 (32 MiB).
	MinFreeBytes int64 `yaml:"min_free_bytes"`
	// MaxDeadLetters bounds the dead letters kept (oldest deleted first,
	// counted). Default 10000.
	MaxDeadLetters int `yaml:"max_dead_letters"`
	// MaxDeadLetterPayload is how many bytes of a dead-lettered payload
	// are kept. Default 4096.
	MaxDeadLetterPayload int `yaml:"max_dead_letter_payload"`
	// DedupMessages is how many recent messages without their own time
	// are remembered to recognize a broker's redelivery; -1 disables it.
	// Default 16384.
	DedupMessages int `yaml:"dedup_messages"`
	// DeviceRegistryInterval is how often a device's record in the
	// replicated "devices" collection is refreshed while it sends (it is
	// written at once when first seen). Default 30s.
	DeviceRegistryInterval time.Duration `yaml:"device_registry_interval"`
}

// MQTTConfig configures the agent's MQTT connection.
type MQTTConfig struct {
	// Broker is the broker to subscribe to: tcp://host:port or
	// ssl://host:port. Empty runs the embedded broker on EmbeddedListen.
	Broker string `yaml:"broker"`
	// EmbeddedListen is the TCP address of the embedded broker (used when
	// Broker is empty); port 0 picks a free port. Default "127.0.0.1:1883".
	EmbeddedListen string `yaml:"embedded_listen"`
	// ClientID is the agent's MQTT client id, which names its persistent
	// session: keep it stable. Empty means "edge-agent-" + node name.
	ClientID string `yaml:"client_id"`
	// Username and Password authenticate to the broker. With the embedded
	// broker and a username set, the broker admits that user as the
	// agent's own (any client id; subscribe to every device's telemetry,
	// publish commands and inference), beside the registered devices.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile holds the password (trailing newline ignored); set it
	// or Password.
	PasswordFile string `yaml:"password_file"`
	// CAFile is a PEM bundle verifying an ssl:// broker; empty means the
	// system roots.
	CAFile string `yaml:"ca_file"`
	// KeepAlive is the MQTT keep-alive. Default 30s.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// ConnectTimeout bounds one connection attempt. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxReconnectInterval caps the back-off between reconnection
	// attempts. Default 10s.
	MaxReconnectInterval time.Duration `yaml:"max_reconnect_interval"`
}

// IngestLimits bound one message.
type IngestLimits struct {
	// MaxPayloadBytes is the largest payload accepted. Default 65536.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// MaxRecords is the most SenML records or flat JSON fields. Default 1000.
	MaxRecords int `yaml:"max_records"`
	// MaxNameLen is the longest metric name in bytes. Default 255.
	MaxNameLen int `yaml:"max_name_len"`
	// MaxUnitLen is the longest unit in bytes. Default 32.
	MaxUnitLen int `yaml:"max_unit_len"`
	// MaxTextLen is the longest string or data value in bytes. Default 1024.
	MaxTextLen int `yaml:"max_text_len"`
	// MaxPast is how far before its receive time a reading may lie.
	// Default 8760h (365 days).
	MaxPast time.Duration `yaml:"max_past"`
	// MaxFuture is how far after its receive time a reading may lie.
	// Default 10m.
	MaxFuture time.Duration `yaml:"max_future"`
}

// IngestRetention bounds what the ingestion database keeps.
type IngestRetention struct {
	// Interval is how often retention runs. Default 1m.
	Interval time.Duration `yaml:"interval"`
	// RawMaxAge: raw readings older than this are deleted. Default 168h.
	RawMaxAge time.Duration `yaml:"raw_max_age"`
	// MaxBytes: above this database size the oldest raw readings are
	// deleted. Default 536870912 (512 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
	// MinuteMaxAge: per-minute rollups older than this are deleted.
	// Default 744h (31 days).
	MinuteMaxAge time.Duration `yaml:"minute_max_age"`
	// HourMaxAge: per-hour rollups older than this are deleted. Default
	// 9600h (400 days).
	HourMaxAge time.Duration `yaml:"hour_max_age"`
	// DeadLetterMaxAge: dead letters older than this are deleted. Default
	// 720h (30 days).
	DeadLetterMaxAge time.Duration `yaml:"dead_letter_max_age"`
}

// DefaultEmbeddedListen is the embedded broker's default address.
const DefaultEmbeddedListen = "127.0.0.1:1883"

// DevicesCollection is the replicated LWW collection of the device
// registry: key device id, value a JSON DeviceRecord.
const DevicesCollection = "devices"

// CommandTopic is the topic commands for a device are published to.
func CommandTopic(device string) string { return "devices/" + device + "/commands" }

// maxCommandBytes is the largest command payload the API publishes.
const maxCommandBytes = 64 << 10

func defaultIngestConfig() IngestConfig {
	lim := ingest.DefaultLimits()
	return IngestConfig{
		Enabled: true,
		MQTT: MQTTConfig{
			EmbeddedListen:       DefaultEmbeddedListen,
			KeepAlive:            30 * time.Second,
			ConnectTimeout:       10 * time.Second,
			MaxReconnectInterval: 10 * time.Second,
		},
		Broker:        defaultEmbeddedBrokerConfig(),
		Topic:         ingest.DefaultTopicPattern,
		BatchMessages: 1000,
		BatchDelay:    5 * time.Millisecond,
		QueueMessages: 1000,
		Limits: IngestLimits{
			MaxPayloadBytes: lim.MaxPayloadBytes,
			MaxRecords:      lim.MaxRecords,
			MaxNameLen:      lim.MaxNameLen,
			MaxUnitLen:      lim.MaxUnitLen,
			MaxTextLen:      lim.MaxTextLen,
			MaxPast:         lim.MaxPast,
			MaxFuture:       lim.MaxFuture,
		},
		Retention: IngestRetention{
			Interval:         time.Minute,
			RawMaxAge:        7 * 24 * time.Hour,
			MaxBytes:         512 << 20,
			MinuteMaxAge:     31 * 24 * time.Hour,
			HourMaxAge:       400 * 24 * time.Hour,
			DeadLetterMaxAge: 30 * 24 * time.Hour,
		},
		OutboxMaxBytes:         256 << 20,
		HighWaterBytes:         768 << 20,
		MinFreeBytes:           ingest.DefaultMinFreeBytes,
		MaxDeadLetters:         10000,
		MaxDeadLetterPayload:   4096,
		DedupMessages:          16384,
		DeviceRegistryInterval: 30 * time.Second,
	}
}

// brokerScheme reports whether a broker URL's scheme is TLS.
func brokerTLS(broker string) bool {
	u, err := url.Parse(broker)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
		return true
	}
	return false
}

func checkBroker(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
	default:
		return fmt.Errorf("%q: scheme %q (want tcp://host:port or ssl://host:port)", s, u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("%q: want tcp://host:port or ssl://host:port", s)
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}

func (c *IngestConfig) validate() error {
	if !c.Enabled {
		return nil
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("agent: ingest.%s: %s", field, fmt.Sprintf(format, args...))
	}
	m := &c.MQTT
	if m.Broker != "" {
		if err := checkBroker(m.Broker); err != nil {
			return bad("mqtt.broker", "%v", err)
		}
	} else {
		host, port, err := net.SplitHostPort(m.EmbeddedListen)
		if err != nil {
			return bad("mqtt.embedded_listen", "%q: %v", m.EmbeddedListen, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return bad("mqtt.embedded_listen", "%q: bad port", m.EmbeddedListen)
		}
		if host != "" && host != "localhost" && net.ParseIP(host) == nil {
			return bad("mqtt.embedded_listen", "%q: host is not an IP address", m.EmbeddedListen)
		}
		if m.CAFile != "" {
			return bad("mqtt.ca_file", "set, but the embedded broker (mqtt.broker empty) serves plain TCP")
		}
	}
	if err := c.Broker.validate(m.Broker, c.Limits.MaxPayloadBytes); err != nil {
		return err
	}
	if m.CAFile != "" && m.Broker != "" && !brokerTLS(m.Broker) {
		return bad("mqtt.ca_file", "set, but mqtt.broker %q is not ssl://", m.Broker)
	}
	if len(m.ClientID) > 128 {
		return bad("mqtt.client_id", "%d bytes, at most 128", len(m.ClientID))
	}
	if m.Password != "" && m.PasswordFile != "" {
		return errors.New("agent: ingest.mqtt.password and ingest.mqtt.password_file are both set; set one")
	}
	if (m.Password != "" || m.PasswordFile != "") && m.Username == "" {
		return bad("mqtt.username", "empty, but a password is set")
	}
	if m.KeepAlive < time.Second {
		return bad("mqtt.keep_alive", "%s, at least 1s", m.KeepAlive)
	}
	if m.ConnectTimeout < 10*time.Millisecond {
		return bad("mqtt.connect_timeout", "%s, at least 10ms", m.ConnectTimeout)
	}
	if m.MaxReconnectInterval < 10*time.Millisecond {
		return bad("mqtt.max_reconnect_interval", "%s, at least 10ms", m.MaxReconnectInterval)
	}
	if _, err := ingest.ParseTopicPattern(c.Topic); err != nil || c.Topic == "" {
		return bad("topic", "%q: want a pattern with one {device_id} level, like %q", c.Topic, ingest.DefaultTopicPattern)
	}
	switch {
	case c.BatchMessages < 1 || c.BatchMessages > 100_000:
		return bad("batch_messages", "%d outside 1..100000", c.BatchMessages)
	case c.BatchDelay <= 0 || c.BatchDelay > 10*time.Second:
		return bad("batch_delay", "%s outside (0, 10s]", c.BatchDelay)
	case c.QueueMessages < c.BatchMessages || c.QueueMessages > 1_000_000:
		return bad("queue_messages", "%d outside batch_messages (%d)..1000000", c.QueueMessages, c.BatchMessages)
	}
	l := &c.Limits
	switch {
	case l.MaxPayloadBytes < 1 || l.MaxPayloadBytes > 256<<20:
		return bad("limits.max_payload_bytes", "%d outside 1..%d", l.MaxPayloadBytes, 256<<20)
	case l.MaxRecords < 1 || l.MaxRecords > 1_000_000:
		return bad("limits.max_records", "%d outside 1..1000000", l.MaxRecords)
	case l.MaxNameLen < 1 || l.MaxNameLen > 4096:
		return bad("limits.max_name_len", "%d outside 1..4096", l.MaxNameLen)
	case l.MaxUnitLen < 1 || l.MaxUnitLen > 4096:
		return bad("limits.max_unit_len", "%d outside 1..4096", l.MaxUnitLen)
	case l.MaxTextLen < 1 || l.MaxTextLen > 1<<20:
		return bad("limits.max_text_len", "%d outside 1..%d", l.MaxTextLen, 1<<20)
	case l.MaxPast <= 0:
		return bad("limits.max_past", "must be positive, got %s", l.MaxPast)
	case l.MaxFuture <= 0:
		return bad("limits.max_future", "must be positive, got %s", l.MaxFuture)
	}
	r := &c.Retention
	switch {
	case r.Interval < time.Second:
		return bad("retention.interval", "%s, at least 1s", r.Interval)
	case r.RawMaxAge < time.Minute:
		return bad("retention.raw_max_age", "%s, at least 1m", r.RawMaxAge)
	case r.MaxBytes < 1<<20:
		return bad("retention.max_bytes", "%d, at least %d (1 MiB)", r.MaxBytes, 1<<20)
	case r.MinuteMaxAge < r.RawMaxAge:
		return bad("retention.minute_max_age", "%s below raw_max_age %s (rollups are kept longer)", r.MinuteMaxAge, r.RawMaxAge)
	case r.HourMaxAge < r.MinuteMaxAge:
		return bad("retention.hour_max_age", "%s below minute_max_age %s", r.HourMaxAge, r.MinuteMaxAge)
	case r.DeadLetterMaxAge < time.Minute:
		return bad("retention.dead_letter_max_age", "%s, at least 1m", r.DeadLetterMaxAge)
	}
	switch {
	case c.OutboxMaxBytes < 64<<10:
		return bad("outbox_max_bytes", "%d, at least %d (64 KiB)", c.OutboxMaxBytes, 64<<10)
	case c.HighWaterBytes < r.MaxBytes:
		return bad("high_water_bytes", "%d below retention.max_bytes %d", c.HighWaterBytes, r.MaxBytes)
	case c.MinFreeBytes < 0:
		return bad("min_free_bytes", "%d: want 0 (off) or more", c.MinFreeBytes)
	case c.MaxDeadLetters < 1:
		return bad("max_dead_letters", "%d, at least 1", c.MaxDeadLetters)
	case c.MaxDeadLetterPayload < 64 || c.MaxDeadLetterPayload > 1<<20:
		return bad("max_dead_letter_payload", "%d outside 64..%d", c.MaxDeadLetterPayload, 1<<20)
	case c.DedupMessages != -1 && (c.DedupMessages < 1 || c.DedupMessages > 60000):
		return bad("dedup_messages", "%d: want -1 (off) or 1..60000", c.DedupMessages)
	case c.DeviceRegistryInterval < 100*time.Millisecond:
		return bad("device_registry_interval", "%s, at least 100ms", c.DeviceRegistryInterval)
	}
	return nil
}

// storeConfig is the ingestion database's configuration.
func (c *IngestConfig) storeConfig(path string, outbox bool) ingest.StoreConfig {
	return ingest.StoreConfig{
		Path: path,
		Retention: ingest.RetentionConfig{
			RawMaxAge:        c.Retention.RawMaxAge,
			MaxBytes:         c.Retention.MaxBytes,
			MinuteMaxAge:     c.Retention.MinuteMaxAge,
			HourMaxAge:       c.Retention.HourMaxAge,
			DeadLetterMaxAge: c.Retention.DeadLetterMaxAge,
		},
		Outbox:               ingest.OutboxConfig{Disabled: !outbox, MaxBytes: c.OutboxMaxBytes},
		HighWaterBytes:       c.HighWaterBytes,
		MaxDeadLetters:       c.MaxDeadLetters,
		MaxDeadLetterPayload: c.MaxDeadLetterPayload,
		DedupMessages:        c.DedupMessages,
	}
}

// minFreeBytes is ingest.Config.MinFreeBytes: 0 (off) becomes -1.
func (c *IngestConfig) minFreeBytes() int64 {
	if c.MinFreeBytes == 0 {
		return -1
	}
	return c.MinFreeBytes
}

// limits converts the message limits.
func (l IngestLimits) limits() ingest.Limits {
	return ingest.Limits{
		MaxPayloadBytes: l.MaxPayloadBytes,
		MaxRecords:      l.MaxRecords,
		MaxNameLen:      l.MaxNameLen,
		MaxUnitLen:      l.MaxUnitLen,
		MaxTextLen:      l.MaxTextLen,
		MaxPast:         l.MaxPast,
		MaxFuture:       l.MaxFuture,
	}
}
