package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/localapi"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/replication"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/crdt"
	"gopkg.in/yaml.v3"
)

// Config is the agent's configuration. It is loaded from one YAML file
// (LoadConfig), then EDGEFLEET_* environment variables (ApplyEnv), then
// command-line flags. Every field has a default (DefaultConfig);
// deploy/edge-agent.example.yaml documents all of them.
type Config struct {
	// NodeName is this agent's name in the cluster and its CRDT replica id;
	// it must be unique in the cluster. Empty means: the name recorded in
	// DataDir from an earlier run, else the host name.
	NodeName string `yaml:"node_name"`
	// DataDir holds the state database (DataDir/state.db), the generated
	// gossip key and the recorded node name. Default "./edgefleet-data".
	DataDir string `yaml:"data_dir"`
	// Labels are free-form key/value pairs advertised to peers in the
	// node metadata. Default none.
	Labels map[string]string `yaml:"labels"`
	// Gossip configures membership and replication.
	Gossip GossipConfig `yaml:"gossip"`
	// API configures the local HTTP API.
	API APIConfig `yaml:"api"`
	// State configures the replicated store.
	State StateConfig `yaml:"state"`
	// Ingest configures device-data ingestion over MQTT.
	Ingest IngestConfig `yaml:"ingest"`
	// Models configures the model runtime: deployed models run on
	// arriving readings.
	Models ModelsConfig `yaml:"models"`
	// ControlPlane configures the uplink to the control plane; an empty
	// URL runs the agent standalone.
	ControlPlane uplink.Config `yaml:"control_plane"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
	// Runtime configures the Go runtime the agent runs on.
	Runtime RuntimeConfig `yaml:"runtime"`
	// Training configures local training jobs (package agent/training).
	Training TrainingConfig `yaml:"training"`
	// Green configures energy- and carbon-aware scheduling of deferrable
	// work (config_green.go).
	Green GreenConfig `yaml:"green"`
}

// GossipConfig configures memberlist and the anti-entropy protocol.
type GossipConfig struct {
	// BindAddr is the IP address gossip listens on (UDP and TCP). Default "0.0.0.0".
	BindAddr string `yaml:"bind_addr"`
	// BindPort is the gossip port (UDP and TCP); 0 picks a free port. Default 7946.
	BindPort int `yaml:"bind_port"`
	// AdvertiseAddr is the IP address announced to peers. Empty means the
	// bind address, or a private address of this host when bound to 0.0.0.0.
	AdvertiseAddr string `yaml:"advertise_addr"`
	// AdvertisePort is the port announced to peers; 0 means the bound port.
	AdvertisePort int `yaml:"advertise_port"`
	// Join lists seed agents ("host:port" or "host", port 7946) to join at
	// start. Unreachable seeds are retried in the background. Default none.
	Join []string `yaml:"join"`
	// Profile selects memberlist timers: "lan" (memberlist's
	// DefaultLANConfig) or "test" (fast timers for tests on one host).
	Profile string `yaml:"profile"`
	// Cluster names the cluster. It is sent as memberlist's label on every
	// packet and stream (and authenticated when encryption is on), so
	// traffic of another cluster is rejected. Default "edgefleet".
	Cluster string `yaml:"cluster"`
	// Encrypt turns gossip encryption (AES-GCM, memberlist keyring) on.
	// Default true.
	Encrypt bool `yaml:"encrypt"`
	// Key is the gossip key: base64 of 16, 24 or 32 bytes. Empty means the
	// key in KeyFile.
	Key string `yaml:"key"`
	// KeyFile is a file holding the base64 gossip key. Empty means
	// DataDir/gossip.key, generated (mode 0600) on first start when absent;
	// every peer must then be given the same key.
	KeyFile string `yaml:"key_file"`
	// SyncInterval is how often the agent sends an anti-entropy request
	// (its version vector) to one random live peer. It bounds how fast a
	// partition too short for any member to be declared dead heals: no
	// rejoin triggers a sync then. Default 3s (measured at 50 agents: idle
	// gossip ~360 B/s per agent; a 3 s partition converged at p99 13 s,
	// against 49 s with 10s).
	SyncInterval time.Duration `yaml:"sync_interval"`
	// SyncTimeout is how long the agent waits for a peer that has gone
	// silent while answering a sync request before it asks the next one.
	// Default 3s.
	SyncTimeout time.Duration `yaml:"sync_timeout"`
	// ReconnectInterval is how often the agent tries to rejoin a member that
	// failed (was declared dead without leaving); randomized by ±25%.
	// Default 500ms.
	ReconnectInterval time.Duration `yaml:"reconnect_interval"`
	// ReconnectTimeout is how long a failed member is retried before it is
	// forgotten. Default 72h.
	ReconnectTimeout time.Duration `yaml:"reconnect_timeout"`
	// JoinRetryInterval is how often seeds are retried while the agent has
	// no live peer. Default 5s.
	JoinRetryInterval time.Duration `yaml:"join_retry_interval"`
	// MaxChunkBytes caps the encoded deltas sent in one anti-entropy
	// message. Default 262144 (256 KiB).
	MaxChunkBytes int `yaml:"max_chunk_bytes"`
	// InboundQueue is how many received replication messages may wait to
	// be applied; more are dropped (and repaired by anti-entropy). Default 1024.
	InboundQueue int `yaml:"inbound_queue"`
	// Relay passes on, by gossip, each delta received by gossip that was
	// new to this agent (once per delta), so a write spreads epidemically
	// instead of only from its origin; anti-entropy still repairs what
	// gossip misses. false leaves spreading to the origin's broadcasts and
	// anti-entropy (seconds per write in a fleet of tens of agents). Default
	// true. It costs each write about RetransmitMult × log10(N+1) gossip
	// sends per agent instead of per fleet; without writes it sends
	// nothing.
	Relay bool `yaml:"relay"`
}

// APIConfig configures the local HTTP API.
type APIConfig struct {
	// Addr is the listen address; "" disables the API. Default "127.0.0.1:7070".
	Addr string `yaml:"addr"`
	// AllowNonLoopback permits an Addr that is not a loopback address. The
	// API has no authentication; keep it off unless something else guards
	// the port. Default false.
	AllowNonLoopback bool `yaml:"allow_non_loopback"`
	// MaxBodyBytes caps request bodies (413 beyond). Default 1048576 (1 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// StateConfig configures the replicated store.
type StateConfig struct {
	// Collections maps a collection name to its type (lww, orset, counter,
	// mvreg) for the HTTP API. Collections not listed are lww. Default
	// {devices: lww, keys.relay: lww, keys.revocations: lww} (the device
	// registry, the key relay and the revocation list, which must stay
	// lww).
	Collections map[string]crdt.Type `yaml:"collections"`
	// CompactionInterval is how often superseded history and stable
	// tombstones are compacted; 0 disables compaction. Default 10m.
	CompactionInterval time.Duration `yaml:"compaction_interval"`
	// TombstoneTTL is the minimum age of a removal (tombstone) before
	// compaction may drop it, and only once every member not forgotten has
	// applied it. Default 168h. An agent that misses a dropped removal
	// recovers by a state transfer (see package replication).
	TombstoneTTL time.Duration `yaml:"tombstone_ttl"`
	// RecoveryTimeout is how long an agent that starts with an empty
	// database and has seeds holds local writes (503) waiting for a peer
	// to tell whether the fleet knows its node name; after it, the agent
	// assumes it is new. Default 2m.
	RecoveryTimeout time.Duration `yaml:"recovery_timeout"`
	// MaxClockDrift is how far ahead of the local clock a remote timestamp
	// may be before the ops of its origin are refused (the local clock is
	// the wall clock while it is sane, else the median of the peers'
	// clocks). Default 1m.
	MaxClockDrift time.Duration `yaml:"max_clock_drift"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `yaml:"level"`
	// Format is text or json. Default "text".
	Format string `yaml:"format"`
}

// RuntimeConfig configures the Go runtime.
type RuntimeConfig struct {
	// GCPercent is the garbage collector's target: the heap may grow by
	// this percentage of the live heap before a collection (Go's GOGC).
	// Lower trades CPU for memory. The agent's live heap is small (about
	// 3 MB), so collections are cheap: measured with 5,000 messages/s
	// ingested and uploaded (test TestAgentFootprint), 25 keeps the
	// agent's resident memory about 2 MB lower than Go's default 100
	// (3-4 MB at peaks), with CPU within the run-to-run noise. The GOGC
	// environment variable, when set, takes precedence. 10..1000;
	// default 25.
	GCPercent int `yaml:"gc_percent"`
	// ReleaseStartupPages, on Linux 5.4 or later, hands the pages of the
	// agent's executable back to the kernel once start-up is over (when
	// the agent serves, and again StartupPagesDelay later, after
	// enrollment and the first syncs): the kernel maps code and read-only
	// data in large pieces around every page touched, and start-up runs
	// code that never runs again. Pages in use fault back in from the page
	// cache or the disk. Measured on the 20.9 MB amd64 binary: 16.8 MB of
	// it resident when idle after start, 7.6-9.3 MB after a release and
	// 12,000 messages ingested. Default true.
	ReleaseStartupPages bool `yaml:"release_startup_pages"`
}

// StartupPagesDelay is how long after start the executable's pages are
// released a second time (RuntimeConfig.ReleaseStartupPages).
const StartupPagesDelay = 30 * time.Second

// TrainingConfig configures local training jobs on the device's own data.
type TrainingConfig struct {
	// Enabled serves /v1/training (it needs ingestion: the examples are
	// the stored readings). Default true.
	Enabled bool `yaml:"enabled"`
	// MaxExamples bounds the examples of one job (a uniform sample of the
	// range is kept when it holds more), and so its memory: about
	// 8 bytes per feature and example, plus the model and its optimiser
	// state. A job may ask for fewer. 2..10,000,000; default 50,000.
	MaxExamples int `yaml:"max_examples"`
	// KeepJobs is how many finished jobs (status, checkpoint, model) are
	// kept in data_dir/training; the oldest go first. 1..10,000; default 20.
	KeepJobs int `yaml:"keep_jobs"`
}

// Gossip profiles.
const (
	ProfileLAN  = membership.ProfileLAN
	ProfileTest = membership.ProfileTest
)

// Config limits.
const (
	maxNodeNameLen   = replication.MaxNodeNameLen
	maxClusterLen    = 200
	maxLabels        = 32
	minChunkBytes    = 4 << 10
	maxChunkBytesCap = replication.MaxChunkBytesCap
)

// DefaultConfig returns the configuration used when nothing is configured.
func DefaultConfig() Config {
	return Config{
		NodeName: "",
		DataDir:  "./edgefleet-data",
		Labels:   map[string]string{},
		Gossip: GossipConfig{
			BindAddr:          "0.0.0.0",
			BindPort:          7946,
			AdvertiseAddr:     "",
			AdvertisePort:     0,
			Join:              []string{},
			Profile:           ProfileLAN,
			Cluster:           "edgefleet",
			Encrypt:           true,
			Key:               "",
			KeyFile:           "",
			SyncInterval:      3 * time.Second,
			SyncTimeout:       3 * time.Second,
			ReconnectInterval: 500 * time.Millisecond,
			ReconnectTimeout:  72 * time.Hour,
			JoinRetryInterval: 5 * time.Second,
			MaxChunkBytes:     256 << 10,
			InboundQueue:      1024,
			Relay:             true,
		},
		API: APIConfig{
			Addr:             "127.0.0.1:7070",
			AllowNonLoopback: false,
			MaxBodyBytes:     1 << 20,
		},
		State: StateConfig{
			Collections:        map[string]crdt.Type{DevicesCollection: crdt.TypeLWW, IdentitiesCollection: crdt.TypeLWW, KeyRelayCollection: crdt.TypeLWW, RevocationCollection: crdt.TypeLWW},
			CompactionInterval: 10 * time.Minute,
			TombstoneTTL:       7 * 24 * time.Hour,
			RecoveryTimeout:    2 * time.Minute,
			MaxClockDrift:      time.Minute,
		},
		Ingest:       defaultIngestConfig(),
		Models:       defaultModelsConfig(),
		ControlPlane: uplink.DefaultConfig(),
		Log:          LogConfig{Level: "info", Format: "text"},
		Runtime:      RuntimeConfig{GCPercent: 25, ReleaseStartupPages: true},
		Training:     TrainingConfig{Enabled: true, MaxExamples: 50000, KeepJobs: 20},
		Green:        defaultGreenConfig(),
	}
}

// LoadConfig reads the YAML file at path over DefaultConfig. Its errors
// read "agent: config PATH: ..." and name the offending field by its
// dotted YAML path and line.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("agent: config: %w", err) // names path
	}
	defer f.Close()
	cfg, err := parseConfig(f)
	if err != nil {
		return Config{}, fmt.Errorf("agent: config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes YAML from r over DefaultConfig (fields absent from
// the document keep their defaults). Unknown fields and values of the
// wrong kind are an error naming the field; an empty document yields
// DefaultConfig.
func ParseConfig(r io.Reader) (Config, error) {
	cfg, err := parseConfig(r)
	if err != nil {
		return Config{}, fmt.Errorf("agent: config: %w", err)
	}
	return cfg, nil
}

// parseConfig is ParseConfig; its errors carry no prefix, which its
// callers add once.
func parseConfig(r io.Reader) (Config, error) {
	cfg := DefaultConfig()
	data, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil {
		return Config{}, err
	}
	if len(data) > 1<<20 {
		return Config{}, errors.New("larger than 1 MiB")
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return DefaultConfig(), nil
		}
		// Name the field, which the decoder's errors do not.
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) == nil {
			if ferr := checkYAML(&doc, reflect.TypeOf(cfg), ""); ferr != nil {
				return Config{}, ferr
			}
		}
		return Config{}, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document")
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	if cfg.Gossip.Join == nil {
		cfg.Gossip.Join = []string{}
	}
	if cfg.State.Collections == nil {
		cfg.State.Collections = map[string]crdt.Type{}
	}
	return cfg, nil
}

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
)

// checkYAML returns an error for the first node of n that does not fit
// type t: a key t has no field for, or a value of the wrong kind. The
// error names the field by its dotted YAML path (path is n's) and line,
// which the YAML decoder's own errors do not.
func checkYAML(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == 0 || n.Kind == yaml.AliasNode {
		return nil // no document; an alias is checked where it is anchored
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkYAML(n.Content[0], t, path)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // keeps the default
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	at := func(format string, args ...any) error {
		if path == "" {
			return fmt.Errorf("line %d: %s", n.Line, fmt.Sprintf(format, args...))
		}
		return fmt.Errorf("line %d: %s: %s", n.Line, path, fmt.Sprintf(format, args...))
	}
	join := func(key string) string {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	scalar := t == durationType || reflect.PointerTo(t).Implements(unmarshalerType) ||
		(t.Kind() != reflect.Struct && t.Kind() != reflect.Map && t.Kind() != reflect.Slice)
	switch {
	case scalar:
		if n.Kind != yaml.ScalarNode {
			return at("want %s, got a list or mapping", kindWord(t))
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			return at("%q is not %s", n.Value, kindWord(t))
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return at("want a mapping of fields")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := yamlField(t, k.Value)
			if !ok {
				return fmt.Errorf("line %d: %s: unknown field", k.Line, join(k.Value))
			}
			if err := checkYAML(v, f.Type, join(k.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return at("want a mapping")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if err := checkYAML(k, t.Key(), join(k.Value)); err != nil {
				return err
			}
			if err := checkYAML(v, t.Elem(), join(k.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return at("want a list")
		}
		for i, v := range n.Content {
			if err := checkYAML(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// yamlField returns t's field whose YAML name is key.
func yamlField(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key && name != "-" {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// kindWord describes what a value of type t is written as.
func kindWord(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration (such as 500ms, 3s, 10m or 72h)"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uintptr:
		return "an integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	}
	return "a " + t.String()
}

// Environment variables read by ApplyEnv.
const (
	EnvNodeName          = "EDGEFLEET_NODE_NAME"
	EnvDataDir           = "EDGEFLEET_DATA_DIR"
	EnvLabels            = "EDGEFLEET_LABELS" // k=v,k=v
	EnvBind              = "EDGEFLEET_BIND"   // host, host:port or :port
	EnvAdvertise         = "EDGEFLEET_ADVERTISE"
	EnvJoin              = "EDGEFLEET_JOIN" // comma-separated seeds
	EnvProfile           = "EDGEFLEET_PROFILE"
	EnvCluster           = "EDGEFLEET_CLUSTER"
	EnvEncrypt           = "EDGEFLEET_ENCRYPT"
	EnvGossipKey         = "EDGEFLEET_GOSSIP_KEY"
	EnvGossipKeyFile     = "EDGEFLEET_GOSSIP_KEY_FILE"
	EnvSyncInterval      = "EDGEFLEET_SYNC_INTERVAL"
	EnvGossipRelay       = "EDGEFLEET_GOSSIP_RELAY" // true or false
	EnvReconnectInterval = "EDGEFLEET_RECONNECT_INTERVAL"
	EnvAPI               = "EDGEFLEET_API"
	EnvLogLevel          = "EDGEFLEET_LOG_LEVEL"
	EnvLogFormat         = "EDGEFLEET_LOG_FORMAT"

	EnvControlPlaneURL     = "EDGEFLEET_CONTROL_PLANE_URL"
	EnvControlPlaneCAFile  = "EDGEFLEET_CONTROL_PLANE_CA_FILE"
	EnvEnrollmentToken     = "EDGEFLEET_ENROLLMENT_TOKEN"
	EnvEnrollmentTokenFile = "EDGEFLEET_ENROLLMENT_TOKEN_FILE"
	EnvIngest              = "EDGEFLEET_INGEST" // true or false
	EnvMQTTBroker          = "EDGEFLEET_MQTT_BROKER"
	EnvMQTTListen          = "EDGEFLEET_MQTT_LISTEN" // embedded broker address
	EnvMQTTUsername        = "EDGEFLEET_MQTT_USERNAME"
	EnvMQTTPassword        = "EDGEFLEET_MQTT_PASSWORD"
	EnvMQTTPasswordFile    = "EDGEFLEET_MQTT_PASSWORD_FILE"
)

// ApplyEnv overrides fields from EDGEFLEET_* variables found by lookup
// (nil means os.LookupEnv). A variable that is set, even to "", overrides;
// EDGEFLEET_API="" disables the API. Malformed values are an error naming
// the variable.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	str := func(name string, dst *string) {
		if v, ok := lookup(name); ok {
			*dst = strings.TrimSpace(v)
		}
	}
	str(EnvNodeName, &c.NodeName)
	str(EnvDataDir, &c.DataDir)
	str(EnvProfile, &c.Gossip.Profile)
	str(EnvCluster, &c.Gossip.Cluster)
	str(EnvGossipKey, &c.Gossip.Key)
	str(EnvGossipKeyFile, &c.Gossip.KeyFile)
	str(EnvAPI, &c.API.Addr)
	str(EnvLogLevel, &c.Log.Level)
	str(EnvLogFormat, &c.Log.Format)
	str(EnvControlPlaneURL, &c.ControlPlane.URL)
	str(EnvControlPlaneCAFile, &c.ControlPlane.CAFile)
	str(EnvEnrollmentToken, &c.ControlPlane.EnrollmentToken)
	str(EnvEnrollmentTokenFile, &c.ControlPlane.EnrollmentTokenFile)
	str(EnvMQTTBroker, &c.Ingest.MQTT.Broker)
	str(EnvMQTTListen, &c.Ingest.MQTT.EmbeddedListen)
	str(EnvMQTTUsername, &c.Ingest.MQTT.Username)
	str(EnvMQTTPasswordFile, &c.Ingest.MQTT.PasswordFile)
	if v, ok := lookup(EnvMQTTPassword); ok {
		c.Ingest.MQTT.Password = v // kept as given: spaces may belong to it
	}
	if v, ok := lookup(EnvLabels); ok {
		labels, err := ParseLabels(v)
		if err != nil {
			return fmt.Errorf("agent: %s: %w", EnvLabels, err)
		}
		c.Labels = labels
	}
	if v, ok := lookup(EnvBind); ok {
		if err := c.SetBind(v); err != nil {
			return fmt.Errorf("agent: %s: %w", EnvBind, err)
		}
	}
	if v, ok := lookup(EnvAdvertise); ok {
		if err := c.SetAdvertise(v); err != nil {
			return fmt.Errorf("agent: %s: %w", EnvAdvertise, err)
		}
	}
	if v, ok := lookup(EnvJoin); ok {
		c.Gossip.Join = SplitList(v)
	}
	for name, dst := range map[string]*bool{
		EnvEncrypt:     &c.Gossip.Encrypt,
		EnvIngest:      &c.Ingest.Enabled,
		EnvGossipRelay: &c.Gossip.Relay,
	} {
		if v, ok := lookup(name); ok {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("agent: %s: %q is not a boolean", name, v)
			}
			*dst = b
		}
	}
	for name, dst := range map[string]*time.Duration{
		EnvSyncInterval:      &c.Gossip.SyncInterval,
		EnvReconnectInterval: &c.Gossip.ReconnectInterval,
	} {
		if v, ok := lookup(name); ok {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("agent: %s: %q is not a duration", name, v)
			}
			*dst = d
		}
	}
	return nil
}

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	out := []string{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// ParseLabels parses "k=v,k=v" into a map.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range SplitList(s) {
		k, v, ok := strings.Cut(item, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q is not key=value", item)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// SetBind sets the gossip bind address from "host", "host:port" or ":port".
func (c *Config) SetBind(s string) error {
	host, port, err := splitHostMaybePort(s)
	if err != nil {
		return err
	}
	if host != "" {
		c.Gossip.BindAddr = host
	}
	if port >= 0 {
		c.Gossip.BindPort = port
	}
	return nil
}

// SetAdvertise sets the advertised address from "host", "host:port" or ":port".
func (c *Config) SetAdvertise(s string) error {
	host, port, err := splitHostMaybePort(s)
	if err != nil {
		return err
	}
	c.Gossip.AdvertiseAddr = host
	if port >= 0 {
		c.Gossip.AdvertisePort = port
	}
	return nil
}

// splitHostMaybePort returns port -1 when s has no port.
func splitHostMaybePort(s string) (string, int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", 0, errors.New("empty address")
	}
	if ip := net.ParseIP(strings.Trim(s, "[]")); ip != nil {
		return ip.String(), -1, nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", s, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("address %q: bad port", s)
	}
	return host, port, nil
}

// Validate checks every field and returns an error naming the first
// invalid one.
func (c *Config) Validate() error {
	if c.NodeName != "" {
		if err := validateNodeName(c.NodeName); err != nil {
			return fmt.Errorf("agent: node_name: %w", err)
		}
	}
	if strings.TrimSpace(c.DataDir) == "" {
		return errors.New("agent: data_dir: must not be empty")
	}
	if len(c.Labels) > maxLabels {
		return fmt.Errorf("agent: labels: %d labels, at most %d", len(c.Labels), maxLabels)
	}
	for k, v := range c.Labels {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("agent: labels: key %q or its value is empty or not UTF-8", k)
		}
	}
	meta, err := membership.EncodeMeta(NodeMeta{ID: c.nameForSizeCheck(), Version: Version, Labels: c.Labels})
	if err != nil {
		return fmt.Errorf("agent: labels: %w", err)
	}
	if len(meta) > membership.MaxMetaBytes {
		return fmt.Errorf("agent: labels: node metadata is %d bytes, at most %d (use fewer or shorter labels)", len(meta), membership.MaxMetaBytes)
	}
	if err := c.Gossip.validate(); err != nil {
		return err
	}
	if err := c.API.validate(); err != nil {
		return err
	}
	for name, t := range c.State.Collections {
		if err := localapi.ValidateName("collection", name); err != nil {
			return fmt.Errorf("agent: state.collections: %w", err)
		}
		if !t.Valid() {
			return fmt.Errorf("agent: state.collections: %q has unknown type %q (want lww, orset, counter or mvreg)", name, t)
		}
		if name == DevicesCollection && t != crdt.TypeLWW {
			return fmt.Errorf("agent: state.collections: %q is the device registry and must be lww, not %q", name, t)
		}
		if name == IdentitiesCollection && t != crdt.TypeLWW {
			return fmt.Errorf("agent: state.collections: %q holds the device identities and must be lww, not %q", name, t)
		}
		if name == KeyRelayCollection && t != crdt.TypeLWW {
			return fmt.Errorf("agent: state.collections: %q is the key relay and must be lww, not %q", name, t)
		}
		if name == RevocationCollection && t != crdt.TypeLWW {
			return fmt.Errorf("agent: state.collections: %q is the revocation list and must be lww, not %q", name, t)
		}
	}
	if c.State.CompactionInterval < 0 {
		return errors.New("agent: state.compaction_interval: must not be negative")
	}
	if c.State.TombstoneTTL <= 0 {
		return errors.New("agent: state.tombstone_ttl: must be positive")
	}
	if c.State.RecoveryTimeout <= 0 {
		return errors.New("agent: state.recovery_timeout: must be positive")
	}
	if c.State.MaxClockDrift <= 0 {
		return errors.New("agent: state.max_clock_drift: must be positive")
	}
	if err := c.Ingest.validate(); err != nil {
		return err
	}
	if err := c.Models.validate(); err != nil {
		return err
	}
	if err := c.ControlPlane.Validate(); err != nil {
		var fe *uplink.FieldError
		if errors.As(err, &fe) {
			return &fieldError{"control_plane." + fe.Field, fe.Msg, err}
		}
		return fmt.Errorf("agent: control_plane: %w", err)
	}
	if _, err := c.Log.level(); err != nil {
		return err
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("agent: log.format: %q (want text or json)", c.Log.Format)
	}
	if c.Runtime.GCPercent < 10 || c.Runtime.GCPercent > 1000 {
		return fmt.Errorf("agent: runtime.gc_percent: %d (want 10..1000)", c.Runtime.GCPercent)
	}
	if c.Training.MaxExamples < 2 || c.Training.MaxExamples > 10_000_000 {
		return fmt.Errorf("agent: training.max_examples: %d (want 2..10000000)", c.Training.MaxExamples)
	}
	if c.Training.KeepJobs < 1 || c.Training.KeepJobs > 10_000 {
		return fmt.Errorf("agent: training.keep_jobs: %d (want 1..10000)", c.Training.KeepJobs)
	}
	return c.Green.validate()
}

// fieldError is an invalid field of a part of the config another package
// validates: its message names the field by its full YAML path, once
// prefixed, and it unwraps to that package's error.
type fieldError struct {
	path, msg string
	err       error
}

func (e *fieldError) Error() string { return "agent: " + e.path + ": " + e.msg }
func (e *fieldError) Unwrap() error { return e.err }

func (c *Config) nameForSizeCheck() string {
	if c.NodeName != "" {
		return c.NodeName
	}
	return strings.Repeat("n", maxNodeNameLen)
}

func (g *GossipConfig) validate() error {
	if ip := net.ParseIP(g.BindAddr); ip == nil {
		return fmt.Errorf("agent: gossip.bind_addr: %q is not an IP address", g.BindAddr)
	}
	if g.BindPort < 0 || g.BindPort > 65535 {
		return fmt.Errorf("agent: gossip.bind_port: %d out of range", g.BindPort)
	}
	if g.AdvertiseAddr != "" && net.ParseIP(g.AdvertiseAddr) == nil {
		return fmt.Errorf("agent: gossip.advertise_addr: %q is not an IP address", g.AdvertiseAddr)
	}
	if g.AdvertisePort < 0 || g.AdvertisePort > 65535 {
		return fmt.Errorf("agent: gossip.advertise_port: %d out of range", g.AdvertisePort)
	}
	for _, seed := range g.Join {
		if strings.TrimSpace(seed) == "" || strings.ContainsAny(seed, " \t\n") {
			return fmt.Errorf("agent: gossip.join: bad seed %q", seed)
		}
	}
	switch g.Profile {
	case ProfileLAN, ProfileTest:
	default:
		return fmt.Errorf("agent: gossip.profile: %q (want %s or %s)", g.Profile, ProfileLAN, ProfileTest)
	}
	if g.Cluster == "" || len(g.Cluster) > maxClusterLen || !utf8.ValidString(g.Cluster) {
		return fmt.Errorf("agent: gossip.cluster: must be 1..%d bytes of UTF-8", maxClusterLen)
	}
	if g.Key != "" {
		if _, err := keys.DecodeGossipKey(g.Key); err != nil {
			return fmt.Errorf("agent: gossip.key: %w", err)
		}
	}
	if g.Key != "" && g.KeyFile != "" {
		return errors.New("agent: gossip.key and gossip.key_file are both set; set one")
	}
	for name, d := range map[string]time.Duration{
		"sync_interval":       g.SyncInterval,
		"sync_timeout":        g.SyncTimeout,
		"reconnect_interval":  g.ReconnectInterval,
		"reconnect_timeout":   g.ReconnectTimeout,
		"join_retry_interval": g.JoinRetryInterval,
	} {
		if d <= 0 {
			return fmt.Errorf("agent: gossip.%s: must be positive, got %v", name, d)
		}
	}
	if g.MaxChunkBytes < minChunkBytes || g.MaxChunkBytes > maxChunkBytesCap {
		return fmt.Errorf("agent: gossip.max_chunk_bytes: %d out of range [%d, %d]", g.MaxChunkBytes, minChunkBytes, maxChunkBytesCap)
	}
	if g.InboundQueue < 1 || g.InboundQueue > 1<<20 {
		return fmt.Errorf("agent: gossip.inbound_queue: %d out of range [1, %d]", g.InboundQueue, 1<<20)
	}
	return nil
}

func (a *APIConfig) validate() error {
	if a.MaxBodyBytes <= 0 || a.MaxBodyBytes > crdt.MaxValueLen {
		return fmt.Errorf("agent: api.max_body_bytes: %d out of range [1, %d] (the largest value the store accepts)", a.MaxBodyBytes, crdt.MaxValueLen)
	}
	if a.Addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(a.Addr)
	if err != nil {
		return fmt.Errorf("agent: api.addr: %q: %w", a.Addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("agent: api.addr: %q: bad port", a.Addr)
	}
	if !a.AllowNonLoopback && !isLoopbackHost(host) {
		return fmt.Errorf("agent: api.addr: %q is not a loopback address (the API has no authentication; set api.allow_non_loopback to override)", a.Addr)
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (l LogConfig) level() (slog.Level, error) {
	switch strings.ToLower(l.Level) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("agent: log.level: %q (want debug, info, warn or error)", l.Level)
}

// NewLogger returns a slog logger writing to w at the configured level and
// format.
func (l LogConfig) NewLogger(w io.Writer) (*slog.Logger, error) {
	lvl, err := l.level()
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.Format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("agent: log.format: %q (want text or json)", l.Format)
}

func validateNodeName(name string) error {
	if name == "" || len(name) > maxNodeNameLen {
		return fmt.Errorf("%q must be 1..%d bytes", name, maxNodeNameLen)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == '/' || r == utf8.RuneError {
			return fmt.Errorf("%q contains a space, control character, '/' or invalid UTF-8", name)
		}
	}
	return nil
}
