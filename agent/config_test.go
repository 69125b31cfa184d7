package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/crdt"
	"gopkg.in/yaml.v3"
)

const examplePath = "../deploy/edge-agent.example.yaml"

func TestDefaultConfigValidates(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig does not validate: %v", err)
	}
}

func TestExampleConfigEqualsDefaults(t *testing.T) {
	cfg, err := LoadConfig(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("example config differs from DefaultConfig:\n got %+v\nwant %+v", cfg, want)
	}
}

// yamlKeys lists the dotted yaml keys of every field of a struct type.
func yamlKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		out = append(out, prefix+tag)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			out = append(out, yamlKeys(f.Type, prefix+tag+".")...)
		}
	}
	return out
}

func nodeKeys(n *yaml.Node, prefix string, out map[string]bool) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			nodeKeys(c, prefix, out)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := prefix + n.Content[i].Value
		out[key] = true
		nodeKeys(n.Content[i+1], key+".", out)
	}
}

func TestExampleConfigDocumentsEveryField(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	nodeKeys(&doc, "", have)
	for _, k := range yamlKeys(reflect.TypeOf(Config{}), "") {
		if !have[k] {
			t.Errorf("example config does not document %q", k)
		}
	}
	// Every documented field is preceded by a comment.
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		trim := strings.TrimSpace(line)
		if trim == "" || strings.HasPrefix(trim, "#") || !strings.Contains(trim, ":") || strings.HasSuffix(trim, ":") {
			continue
		}
		if i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
			t.Errorf("line %d %q has no comment above it", i+1, trim)
		}
	}
}

func TestParseConfigUnknownFieldNamed(t *testing.T) {
	for doc, field := range map[string]string{
		"node_nam: a\n":             "node_nam",
		"gossip:\n  bind_prot: 1\n": "bind_prot",
		"api:\n  adress: x\n":       "adress",
	} {
		_, err := ParseConfig(strings.NewReader(doc))
		if err == nil {
			t.Fatalf("%q: unknown field accepted", doc)
		}
		if !strings.Contains(err.Error(), field) {
			t.Errorf("%q: error %q does not name %q", doc, err, field)
		}
	}
}

func TestParseConfigPartialKeepsDefaults(t *testing.T) {
	cfg, err := ParseConfig(strings.NewReader("gossip:\n  sync_interval: 3s\n  join: [a:1, b:2]\nstate:\n  collections: {tags: orset}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Gossip.SyncInterval = 3 * time.Second
	want.Gossip.Join = []string{"a:1", "b:2"}
	// Maps merge into the defaults: the device registry stays declared.
	want.State.Collections = map[string]crdt.Type{"tags": crdt.TypeORSet, DevicesCollection: crdt.TypeLWW, IdentitiesCollection: crdt.TypeLWW, KeyRelayCollection: crdt.TypeLWW, RevocationCollection: crdt.TypeLWW}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	empty, err := ParseConfig(strings.NewReader(""))
	if err != nil || !reflect.DeepEqual(empty, DefaultConfig()) {
		t.Fatalf("empty document: %v %+v", err, empty)
	}
	if _, err := ParseConfig(strings.NewReader("a: 1\n---\nb: 2\n")); err == nil {
		t.Fatal("two documents accepted")
	}
}

func TestConfigPrecedenceFileThenEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.yaml")
	file := "node_name: from-file\ndata_dir: /file/dir\ngossip:\n  bind_addr: 10.0.0.1\n  bind_port: 8000\n  join: [f:1]\n  cluster: filecluster\napi:\n  addr: 127.0.0.1:9000\nlog:\n  level: debug\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		EnvNodeName:    "from-env",
		EnvBind:        "127.0.0.1:9100",
		EnvJoin:        " a:1, ,b:2 ",
		EnvAPI:         "",
		EnvGossipKey:   "MDEyMzQ1Njc4OWFiY2RlZg==",
		EnvLabels:      "zone=a,rack=7",
		EnvEncrypt:     "false",
		EnvGossipRelay: "false",
	}
	if err := cfg.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	// Env wins where set.
	if cfg.NodeName != "from-env" || cfg.Gossip.BindAddr != "127.0.0.1" || cfg.Gossip.BindPort != 9100 {
		t.Errorf("env did not override name/bind: %+v", cfg)
	}
	if !reflect.DeepEqual(cfg.Gossip.Join, []string{"a:1", "b:2"}) {
		t.Errorf("join = %q", cfg.Gossip.Join)
	}
	if cfg.API.Addr != "" {
		t.Errorf("EDGEFLEET_API=\"\" should disable the API, got %q", cfg.API.Addr)
	}
	if cfg.Gossip.Encrypt || cfg.Gossip.Relay || cfg.Gossip.Key == "" || cfg.Labels["rack"] != "7" {
		t.Errorf("encrypt/key/labels not applied: %+v", cfg)
	}
	// File wins over defaults where env is silent.
	if cfg.DataDir != "/file/dir" || cfg.Gossip.Cluster != "filecluster" || cfg.Log.Level != "debug" {
		t.Errorf("file values lost: %+v", cfg)
	}
	// Defaults remain where neither says anything.
	if cfg.Gossip.SyncInterval != DefaultConfig().Gossip.SyncInterval || cfg.Gossip.Profile != ProfileLAN {
		t.Errorf("defaults lost: %+v", cfg.Gossip)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyEnvIngestAndControlPlane(t *testing.T) {
	cfg := DefaultConfig()
	env := map[string]string{
		EnvControlPlaneURL:    " https://cp.example:8443 ",
		EnvControlPlaneCAFile: "/etc/edgefleet/ca.pem",
		EnvEnrollmentToken:    "tok-123",
		EnvMQTTBroker:         "tcp://10.0.0.5:1883",
		EnvMQTTUsername:       "agent",
		EnvMQTTPassword:       " secret with spaces ",
		EnvIngest:             "false",
	}
	if err := cfg.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	cp, m := cfg.ControlPlane, cfg.Ingest.MQTT
	if cp.URL != "https://cp.example:8443" || cp.CAFile != "/etc/edgefleet/ca.pem" || cp.EnrollmentToken != "tok-123" {
		t.Errorf("control plane env not applied: %+v", cp)
	}
	if m.Broker != "tcp://10.0.0.5:1883" || m.Username != "agent" || m.Password != " secret with spaces " || cfg.Ingest.Enabled {
		t.Errorf("mqtt env not applied: %+v enabled=%v", m, cfg.Ingest.Enabled)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyEnvRejectsMalformed(t *testing.T) {
	for name, val := range map[string]string{
		EnvEncrypt:      "maybe",
		EnvSyncInterval: "soon",
		EnvBind:         "1.2.3.4:notaport",
		EnvLabels:       "novalue",
		EnvIngest:       "perhaps",
		EnvGossipRelay:  "sometimes",
	} {
		cfg := DefaultConfig()
		err := cfg.ApplyEnv(func(k string) (string, bool) {
			if k == name {
				return val, true
			}
			return "", false
		})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: error %v does not name the variable", name, val, err)
		}
	}
}

func TestValidateNamesBadField(t *testing.T) {
	cases := map[string]func(c *Config){
		"node_name":                      func(c *Config) { c.NodeName = "has space" },
		"data_dir":                       func(c *Config) { c.DataDir = " " },
		"gossip.bind_addr":               func(c *Config) { c.Gossip.BindAddr = "nowhere" },
		"gossip.bind_port":               func(c *Config) { c.Gossip.BindPort = 70000 },
		"gossip.profile":                 func(c *Config) { c.Gossip.Profile = "wan" },
		"gossip.cluster":                 func(c *Config) { c.Gossip.Cluster = "" },
		"gossip.key":                     func(c *Config) { c.Gossip.Key = "c2hvcnQ=" },
		"gossip.sync_interval":           func(c *Config) { c.Gossip.SyncInterval = 0 },
		"gossip.max_chunk_bytes":         func(c *Config) { c.Gossip.MaxChunkBytes = 10 },
		"api.addr":                       func(c *Config) { c.API.Addr = "0.0.0.0:7070" },
		"state.collections":              func(c *Config) { c.State.Collections = map[string]crdt.Type{"x": "tree"} },
		"log.level":                      func(c *Config) { c.Log.Level = "loud" },
		"log.format":                     func(c *Config) { c.Log.Format = "xml" },
		"runtime.gc_percent":             func(c *Config) { c.Runtime.GCPercent = 5 },
		"labels":                         func(c *Config) { c.Labels = map[string]string{"k": strings.Repeat("v", 600)} },
		"state.collections: \"devices\"": func(c *Config) { c.State.Collections = map[string]crdt.Type{DevicesCollection: crdt.TypeORSet} },
		"ingest.mqtt.broker":             func(c *Config) { c.Ingest.MQTT.Broker = "http://broker:1883" },
		"ingest.mqtt.embedded_listen":    func(c *Config) { c.Ingest.MQTT.EmbeddedListen = "nowhere" },
		"ingest.mqtt.ca_file":            func(c *Config) { c.Ingest.MQTT.CAFile = "/ca.pem" },
		"ingest.mqtt.password_file": func(c *Config) {
			c.Ingest.MQTT.Username, c.Ingest.MQTT.Password, c.Ingest.MQTT.PasswordFile = "u", "p", "/pw"
		},
		"ingest.mqtt.username":            func(c *Config) { c.Ingest.MQTT.Password = "p" },
		"ingest.mqtt.keep_alive":          func(c *Config) { c.Ingest.MQTT.KeepAlive = 0 },
		"ingest.topic":                    func(c *Config) { c.Ingest.Topic = "devices/+/telemetry" },
		"ingest.batch_messages":           func(c *Config) { c.Ingest.BatchMessages = 0 },
		"ingest.batch_delay":              func(c *Config) { c.Ingest.BatchDelay = -time.Second },
		"ingest.queue_messages":           func(c *Config) { c.Ingest.QueueMessages = 10 },
		"ingest.limits.max_payload_bytes": func(c *Config) { c.Ingest.Limits.MaxPayloadBytes = 0 },
		"ingest.limits.max_future":        func(c *Config) { c.Ingest.Limits.MaxFuture = 0 },
		"ingest.retention.interval":       func(c *Config) { c.Ingest.Retention.Interval = time.Millisecond },
		"ingest.retention.minute_max_age": func(c *Config) { c.Ingest.Retention.MinuteMaxAge = time.Hour },
		"ingest.outbox_max_bytes":         func(c *Config) { c.Ingest.OutboxMaxBytes = 1 },
		"ingest.high_water_bytes":         func(c *Config) { c.Ingest.HighWaterBytes = 1 << 20 },
		"ingest.dedup_messages":           func(c *Config) { c.Ingest.DedupMessages = 0 },
		"ingest.min_free_bytes":           func(c *Config) { c.Ingest.MinFreeBytes = -1 },
		"ingest.device_registry_interval": func(c *Config) { c.Ingest.DeviceRegistryInterval = 0 },
		"control_plane":                   func(c *Config) { c.ControlPlane.URL = "ftp://cp" },
		"green.zone":                      func(c *Config) { c.Green.Zone = "D E" },
		"green.carbon.zone":               func(c *Config) { c.Green.Carbon.Kind = "trace" },
		"green.carbon: trace_file":        func(c *Config) { c.Green.Zone, c.Green.Carbon.Kind = "DE", "trace" },
		"green.carbon: kind":              func(c *Config) { c.Green.Zone, c.Green.Carbon.Kind = "DE", "co2signal" },
		"green.profile":                   func(c *Config) { c.Green.Profile.IdleW = 10 },
		"green.battery.level":             func(c *Config) { c.Green.Battery.Present, c.Green.Battery.Level = true, 1.5 },
		"green.min_battery":               func(c *Config) { c.Green.MinBattery = -0.1 },
		"green.battery_recheck":           func(c *Config) { c.Green.BatteryRecheck = 0 },
		"green.compaction_window":         func(c *Config) { c.Green.CompactionWindow = -time.Second },
		"green.upload_window":             func(c *Config) { c.Green.UploadWindow = -time.Second },
		"green.update_window":             func(c *Config) { c.Green.UpdateWindow = -time.Second },
		"green.update_duration":           func(c *Config) { c.Green.UpdateDuration = 0 },
		"green.training_duration":         func(c *Config) { c.Green.TrainingDuration = 0 },
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, field := range names {
		cfg := DefaultConfig()
		cases[field](&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
	// A disabled ingestion section is not checked; a TLS broker takes a CA file.
	off := DefaultConfig()
	off.Ingest.Enabled = false
	off.Ingest.BatchMessages = 0
	if err := off.Validate(); err != nil {
		t.Errorf("disabled ingest validated: %v", err)
	}
	tlsBroker := DefaultConfig()
	tlsBroker.Ingest.MQTT.Broker = "ssl://broker.example:8883"
	tlsBroker.Ingest.MQTT.CAFile = "/etc/ca.pem"
	tlsBroker.Ingest.MQTT.Username = "agent"
	tlsBroker.Ingest.MQTT.PasswordFile = "/etc/pw"
	if err := tlsBroker.Validate(); err != nil {
		t.Errorf("ssl broker with ca_file: %v", err)
	}
	ok := DefaultConfig()
	ok.API.Addr = "0.0.0.0:7070"
	ok.API.AllowNonLoopback = true
	if err := ok.Validate(); err != nil {
		t.Errorf("allow_non_loopback: %v", err)
	}
}

func TestSetBind(t *testing.T) {
	for in, want := range map[string][2]any{
		"10.1.2.3":      {"10.1.2.3", 7946},
		"10.1.2.3:1234": {"10.1.2.3", 1234},
		":5555":         {"0.0.0.0", 5555},
		"[::1]:80":      {"::1", 80},
		"::1":           {"::1", 7946},
	} {
		cfg := DefaultConfig()
		if err := cfg.SetBind(in); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if cfg.Gossip.BindAddr != want[0] || cfg.Gossip.BindPort != want[1] {
			t.Errorf("%q: got %s %d", in, cfg.Gossip.BindAddr, cfg.Gossip.BindPort)
		}
	}
}

func TestDecodeGossipKey(t *testing.T) {
	for _, k := range []string{"MDEyMzQ1Njc4OWFiY2RlZg==", "MDEyMzQ1Njc4OWFiY2RlZg", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="} {
		if _, err := keys.DecodeGossipKey(k); err != nil {
			t.Errorf("%q: %v", k, err)
		}
	}
	for _, k := range []string{"", "!!!", "c2hvcnQ="} {
		if _, err := keys.DecodeGossipKey(k); err == nil {
			t.Errorf("%q accepted", k)
		}
	}
}

// TestConfigErrorsPrefixedOnce: config errors carry "agent:" once, name
// the field by its YAML path, and still match the validating package's
// sentinel.
func TestConfigErrorsPrefixedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("gossip:\n  bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(path)
	if want := "agent: config " + path + ": line 2: gossip.bogus: unknown field"; err == nil || err.Error() != want {
		t.Errorf("LoadConfig: %v, want %s", err, want)
	}
	_, err = ParseConfig(strings.NewReader("ingest:\n  mqtt:\n    keep_alive: [1]\n"))
	if want := "agent: config: line 3: ingest.mqtt.keep_alive: want a duration (such as 500ms, 3s, 10m or 72h), got a list or mapping"; err == nil || err.Error() != want {
		t.Errorf("ParseConfig: %v, want %s", err, want)
	}
	cfg := DefaultConfig()
	cfg.ControlPlane.URL = "http://cp"
	err = cfg.Validate()
	if want := `agent: control_plane.url: "http://cp" must be https://host[:port]`; err == nil || err.Error() != want {
		t.Errorf("Validate: %v, want %s", err, want)
	}
	if !errors.Is(err, uplink.ErrInvalidConfig) {
		t.Errorf("Validate: %v does not match uplink.ErrInvalidConfig", err)
	}
}

// FuzzParseConfig: any input parses or fails with an "agent: config:"
// error, without panicking; what parses can be validated.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"", "gossip:\n  bind_port: 1\n", "labels: {a: b}\n", "a: &x [1]\nb: *x\n",
		"ingest:\n  mqtt: [1]\n", "state:\n  collections:\n    x: lww\n", "control_plane:\n  seal_telemetry: null\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		cfg, err := ParseConfig(strings.NewReader(doc))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "agent: config: ") || strings.Contains(strings.TrimPrefix(err.Error(), "agent: config: "), "agent: ") {
				t.Fatalf("error %q", err)
			}
			return
		}
		_ = cfg.Validate()
	})
}
