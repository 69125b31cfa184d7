package agent

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// TestEmbeddedBrokerTLSFromConfig: ingest.broker.tls serves mqtts
// from the configured files; a device verifying the fleet CA publishes
// and its readings are stored; the refusal counter is exported.
func TestEmbeddedBrokerTLSFromConfig(t *testing.T) {
	t.Parallel()
	pki := testutil.NewPKI(t)
	c := newCluster(t)
	a := c.start("edge", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.Ingest.Broker.TLS.Listen = "127.0.0.1:0"
		cfg.Ingest.Broker.TLS.CertFile = pki.CertFile
		cfg.Ingest.Broker.TLS.KeyFile = pki.KeyFile
	})
	url := a.MQTTTLSURL()
	if !strings.HasPrefix(url, "ssl://127.0.0.1:") {
		t.Fatalf("TLS URL %q", url)
	}
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("tls-sensor").
		SetTLSConfig(&tls.Config{RootCAs: pki.CAPool}).SetConnectTimeout(5 * time.Second))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device over mqtts: %v", tok.Error())
	}
	defer dev.Disconnect(50)
	publish(t, dev, "devices/tls-sensor/telemetry", `{"temp":20}`, `{"temp":21}`)
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	waitFor(t, 10*time.Second, "readings over TLS stored", func() (bool, string) {
		code, _, raw := api.do("GET", "/v1/devices/tls-sensor", "")
		return code == 200, raw
	})
	// Clear text on the TLS port is refused and counted.
	plain := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + strings.TrimPrefix(url, "ssl://")).
		SetClientID("plain").SetProtocolVersion(4).SetConnectTimeout(3 * time.Second))
	if tok := plain.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() == nil {
		t.Fatal("clear-text client admitted on the TLS port")
	}
	waitFor(t, 5*time.Second, "refusal metric", func() (bool, string) {
		_, _, raw := api.do("GET", "/metrics", "")
		return strings.Contains(raw, `edgefleet_mqtt_broker_refused_total{reason="plain_mqtt_on_tls"} 1`), ""
	})
}

func TestEmbeddedBrokerConfigNamesBadField(t *testing.T) {
	cases := map[string]func(c *Config){
		"ingest.broker.tls.min_version": func(c *Config) { c.Ingest.Broker.TLS.MinVersion = "1.1" },
		"ingest.broker.tls.listen":      func(c *Config) { c.Ingest.Broker.TLS.Listen = "nowhere" },
		"ingest.broker.tls.from_control_plane": func(c *Config) {
			c.Ingest.Broker.TLS.Listen, c.Ingest.Broker.TLS.FromControlPlane = ":8883", true
		},
		"ingest.broker.tls: listen":                        func(c *Config) { c.Ingest.Broker.TLS.Listen = ":8883" },
		"ingest.broker.limits.max_connections":             func(c *Config) { c.Ingest.Broker.Limits.MaxConnections = -1 },
		"ingest.broker.limits.max_connections_per_address": func(c *Config) { c.Ingest.Broker.Limits.MaxConnectionsPerAddress = -1 },
		"ingest.broker.limits.connect_timeout":             func(c *Config) { c.Ingest.Broker.Limits.ConnectTimeout = time.Millisecond },
		"ingest.broker.limits.max_client_id_len":           func(c *Config) { c.Ingest.Broker.Limits.MaxClientIDLen = 5 },
		"ingest.broker.limits.max_packet_bytes":            func(c *Config) { c.Ingest.Broker.Limits.MaxPacketBytes = 1000 },
		"ingest.broker.limits.message_burst":               func(c *Config) { c.Ingest.Broker.Limits.MessageBurst = 0 },
		"ingest.broker.limits.login_max_delay":             func(c *Config) { c.Ingest.Broker.Limits.LoginMaxDelay = time.Millisecond },
		"ingest.broker.limits.offenders":                   func(c *Config) { c.Ingest.Broker.Limits.Offenders = 0 },
	}
	for field, f := range cases {
		cfg := DefaultConfig()
		f(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
	ok := DefaultConfig()
	ok.Ingest.Broker.TLS = EmbeddedTLSConfig{Listen: "0.0.0.0:8883", CertFile: "/c.pem", KeyFile: "/k.pem", MinVersion: "1.3"}
	if err := ok.Validate(); err != nil {
		t.Errorf("TLS listener with files: %v", err)
	}
}
