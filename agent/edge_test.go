package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// withIngest enables ingestion with an embedded broker on a free port and
// a short registry interval.
func withIngest(cfg *Config) {
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	cfg.Ingest.DeviceRegistryInterval = 200 * time.Millisecond
}

// mqttClient connects a device-side client to broker.
func mqttClient(t *testing.T, broker, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", id, broker, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func publish(t *testing.T, c mqtt.Client, topic string, payloads ...string) {
	t.Helper()
	for _, p := range payloads {
		if tok := c.Publish(topic, 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish to %s: %v", topic, tok.Error())
		}
	}
}

// TestIngestAPI: readings published to the embedded broker show up in the
// device registry (here and, replicated, on a peer without ingestion),
// malformed ones in the dead letters; commands reach the device.
func TestIngestAPI(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("edge", nil, withIngest)
	b := c.start("peer", []string{a.GossipAddr()}, nil)
	waitFor(t, 10*time.Second, "cluster", func() (bool, string) { return allAlive([]*Agent{a, b}) })

	if a.Ingest() == nil || a.Uplink() != nil || !strings.HasPrefix(a.MQTTURL(), "tcp://127.0.0.1:") {
		t.Fatalf("ingest %v uplink %v mqtt %q", a.Ingest(), a.Uplink(), a.MQTTURL())
	}
	if !a.Ingest().Subscribed() {
		t.Fatal("Start returned before subscribing to the embedded broker")
	}
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	peer := apiClient{t: t, base: "http://" + b.APIAddr()}

	dev := mqttClient(t, a.MQTTURL(), "sensor-1")
	now := time.Now().Unix()
	publish(t, dev, "devices/sensor-1/telemetry",
		fmt.Sprintf(`{"ts":%d,"temp":21.5,"hum":40}`, now-2),
		fmt.Sprintf(`{"ts":%d,"temp":22.5,"hum":41}`, now-1),
		`{"temp":`)
	publish(t, dev, "devices/bad id/telemetry", `{"temp":1}`)

	var rec DeviceRecord
	waitFor(t, 10*time.Second, "device record", func() (bool, string) {
		code, _, raw := api.do("GET", "/v1/devices/sensor-1", "")
		if code != 200 {
			return false, raw
		}
		rec = DeviceRecord{}
		json.Unmarshal([]byte(raw), &rec)
		return rec.Messages == 2, raw
	})
	if rec.ID != "sensor-1" || rec.Agent != "edge" || rec.Readings != 4 || rec.LastValues["temp"] != 22.5 || rec.LastValues["hum"] != 41 ||
		rec.FirstSeen.IsZero() || rec.LastSeen.Before(rec.FirstSeen) || rec.Updated.IsZero() {
		t.Fatalf("record: %+v", rec)
	}
	list := api.expect("GET", "/v1/devices", "", 200)
	if ds := list["devices"].([]any); len(ds) != 1 || ds[0].(map[string]any)["id"] != "sensor-1" {
		t.Fatalf("devices: %v", list)
	}
	// The registry is replicated state: the peer, which ingests nothing, lists it too.
	waitFor(t, 10*time.Second, "record replicated to the peer", func() (bool, string) {
		code, obj, raw := peer.do("GET", "/v1/devices", "")
		return code == 200 && len(obj["devices"].([]any)) == 1, raw
	})
	// A value in the collection that is not a device record is skipped by
	// the listing and reported by the lookup.
	peer.expect("PUT", "/v1/state/devices/junk", "plain text", 200)
	if got := peer.expect("GET", "/v1/devices", "", 200); len(got["devices"].([]any)) != 1 {
		t.Fatalf("junk listed: %v", got)
	}
	peer.expect("GET", "/v1/devices/junk", "", 500)
	api.expect("GET", "/v1/devices/nobody", "", 404)
	api.expect("GET", "/v1/devices/bad%20id", "", 400)

	// Dead letters: the malformed payload and the bad topic.
	dl := api.expect("GET", "/v1/dead-letters", "", 200)
	items := dl["items"].([]any)
	if len(items) != 2 || dl["next"].(float64) != 0 {
		t.Fatalf("dead letters: %v", dl)
	}
	byTopic := map[string]string{}
	for _, it := range items {
		m := it.(map[string]any)
		byTopic[m["topic"].(string)] = m["reason"].(string)
	}
	if r := byTopic["devices/sensor-1/telemetry"]; r == "" || r == string(ingest.ReasonTopic) || byTopic["devices/bad id/telemetry"] != string(ingest.ReasonTopic) {
		t.Fatalf("dead letters by topic: %v", byTopic)
	}
	page := api.expect("GET", "/v1/dead-letters?limit=1", "", 200)
	if len(page["items"].([]any)) != 1 || page["next"].(float64) == 0 {
		t.Fatalf("page: %v", page)
	}
	next := int(page["next"].(float64))
	if rest := api.expect("GET", fmt.Sprintf("/v1/dead-letters?after=%d&limit=1", next), "", 200); len(rest["items"].([]any)) != 1 {
		t.Fatalf("second page: %v", rest)
	}
	if only := api.expect("GET", "/v1/dead-letters?reason=bad_topic", "", 200); len(only["items"].([]any)) != 1 {
		t.Fatalf("by reason: %v", only)
	}
	api.expect("GET", "/v1/dead-letters?reason=nonsense", "", 400)
	api.expect("GET", "/v1/dead-letters?limit=0", "", 400)
	api.expect("GET", "/v1/dead-letters?after=-1", "", 400)
	api.expect("DELETE", "/v1/dead-letters", "", 400)
	api.expect("DELETE", "/v1/dead-letters?all=true&reason=syntax", "", 400)
	api.expect("DELETE", "/v1/dead-letters?before=yesterday", "", 400)
	api.expect("DELETE", "/v1/dead-letters?id=x", "", 400)
	if got := api.expect("DELETE", "/v1/dead-letters?reason=bad_topic", "", 200); got["purged"].(float64) != 1 {
		t.Fatalf("purge by reason: %v", got)
	}
	if got := api.expect("DELETE", "/v1/dead-letters?before="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "", 200); got["purged"].(float64) != 0 {
		t.Fatalf("purge before an hour ago: %v", got)
	}
	if got := api.expect("DELETE", "/v1/dead-letters?all=true", "", 200); got["purged"].(float64) != 1 {
		t.Fatalf("purge all: %v", got)
	}

	// Commands reach the device's subscription on the agent's broker.
	got := make(chan string, 1)
	if tok := dev.Subscribe("devices/sensor-1/commands", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	cmd := api.expect("POST", "/v1/devices/sensor-1/commands", `{"fan":"on"}`, 202)
	if cmd["device"] != "sensor-1" || cmd["topic"] != "devices/sensor-1/commands" || cmd["bytes"].(float64) != 12 {
		t.Fatalf("command answer: %v", cmd)
	}
	select {
	case p := <-got:
		if p != `{"fan":"on"}` {
			t.Fatalf("device got %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not delivered")
	}
	api.expect("POST", "/v1/devices/sensor-1/commands", "", 400)
	api.expect("POST", "/v1/devices/bad%2Bid/commands", "x", 400)
	api.expect("POST", "/v1/devices/sensor-1/commands", strings.Repeat("x", maxCommandBytes+1), 400)
	api.expect("GET", "/v1/devices/sensor-1/commands", "", 405)
	// The peer has no ingestion: no broker to publish on, no dead letters.
	peer.expect("POST", "/v1/devices/sensor-1/commands", "x", 503)
	peer.expect("GET", "/v1/dead-letters", "", 503)
	if st := peer.expect("GET", "/v1/ingest", "", 200); st["enabled"] != false || len(st) != 1 {
		t.Fatalf("peer ingest: %v", st)
	}

	st := api.expect("GET", "/v1/ingest", "", 200)
	stats := st["stats"].(map[string]any)
	if st["enabled"] != true || st["broker"] != a.MQTTURL() || st["subscribed"] != true || st["pressure"] != "" ||
		stats["acked"].(float64) != 4 || stats["published"].(float64) != 1 || st["store"].(map[string]any)["devices"].(float64) != 1 {
		t.Fatalf("ingest status: %v", st)
	}
	if up := api.expect("GET", "/v1/uplink", "", 200); up["enabled"] != false || len(up) != 1 {
		t.Fatalf("uplink status without a control plane: %v", up)
	}

	// Heartbeat contents: health checks and resources.
	hb := a.heartbeat()
	if hb.Name != "edge" || hb.Health.Status != healthOK || hb.Health.Checks["state_store"] != "ok" ||
		hb.Health.Checks["ingest_subscribed"] != "ok" || hb.Health.Checks["ingest_store"] != "ok" || hb.Health.Checks["members_alive"] != "2" {
		t.Fatalf("heartbeat: %+v %+v", hb, hb.Health)
	}
	if hb.Resources == nil || (hb.Resources.DiskTotalBytes == 0 && runtime.GOOS == "linux") {
		t.Fatalf("resources: %+v", hb.Resources)
	}
	if ph := b.heartbeat(); ph.Health.Checks["ingest"] != "disabled" || ph.Health.Status != healthOK {
		t.Fatalf("peer heartbeat: %+v", ph.Health)
	}

	// The ingestion metrics are on the agent's registry.
	resp, err := http.Get(api.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"edgefleet_ingest_messages_acked_total 4", "edgefleet_device_registry_writes_total", "edgefleet_ingest_published_total 1"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}

	// A graceful stop writes the records the interval held back.
	publish(t, dev, "devices/sensor-1/telemetry", fmt.Sprintf(`{"ts":%d,"temp":30}`, now))
	waitFor(t, 10*time.Second, "commit", func() (bool, string) {
		return a.Ingest().Stats().Acked == 5, fmt.Sprint(a.Ingest().Stats())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := a.cfg.DataDir
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Ingest() == nil || a.Ingest().Subscribed() {
		t.Fatal("ingestion still subscribed after Stop")
	}
	if _, err := os.Stat(filepath.Join(dir, ingest.StoreFile)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "final record on the peer", func() (bool, string) {
		code, _, raw := peer.do("GET", "/v1/devices/sensor-1", "")
		var r DeviceRecord
		json.Unmarshal([]byte(raw), &r)
		return code == 200 && r.Messages == 3 && r.LastValues["temp"] == 30, raw
	})
}

// TestEmbeddedBrokerPortTaken: a busy embedded_listen fails Start with an
// error naming the setting and the way out, and leaves nothing running.
func TestEmbeddedBrokerPortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := testConfig(t, "busy")
	withIngest(&cfg)
	cfg.Ingest.MQTT.EmbeddedListen = l.Addr().String()
	a, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("busy")})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Start(context.Background())
	if err == nil {
		a.Kill()
		t.Fatal("started with the broker port taken")
	}
	for _, want := range []string{"ingest.mqtt.embedded_listen", l.Addr().String(), "ingest.mqtt.broker"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if a.Running() || a.Ingest() != nil {
		t.Fatal("agent half-started")
	}
	// The same data directory starts once the port is free (nothing was left open).
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	b, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("busy2")})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.Kill()
}

// holdConns accepts connections and never answers, until l closes.
func holdConns(l net.Listener) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		conns = append(conns, c)
	}
}

// TestIngestExternalBrokerDown: an unreachable external broker never
// blocks Start; the agent reports itself degraded and answers 503 to
// commands.
func TestIngestExternalBrokerDown(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A listener that never speaks MQTT (kept open, so no other test's
	// broker can get the port).
	defer l.Close()
	go holdConns(l)
	addr := l.Addr().String()
	c := newCluster(t)
	start := time.Now()
	a := c.start("lonely", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.Ingest.MQTT.Broker = "tcp://" + addr
		cfg.Ingest.MQTT.ClientID = "lonely-client"
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Start took %v with the broker down", d)
	}
	if a.MQTTURL() != "tcp://"+addr {
		t.Fatalf("MQTTURL %q", a.MQTTURL())
	}
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	api.expect("POST", "/v1/devices/d1/commands", "x", 503)
	if st := api.expect("GET", "/v1/ingest", "", 200); st["subscribed"] != false || st["enabled"] != true {
		t.Fatalf("ingest: %v", st)
	}
	if h := a.heartbeat().Health; h.Status != healthDegraded || !strings.Contains(h.Checks["ingest_subscribed"], addr) {
		t.Fatalf("health: %+v", h)
	}
}

// TestEmbeddedBrokerCredentials: with a username, the embedded broker
// admits only that user (password from password_file), and the agent's
// own session uses it.
func TestEmbeddedBrokerCredentials(t *testing.T) {
	t.Parallel()
	pwFile := filepath.Join(t.TempDir(), "mqtt-password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	a := c.start("locked", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.Ingest.MQTT.Username = "fleet"
		cfg.Ingest.MQTT.PasswordFile = pwFile
	})
	if !a.Ingest().Subscribed() {
		t.Fatal("agent not subscribed with its credentials")
	}
	bad := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("intruder").
		SetUsername("fleet").SetPassword("wrong").SetConnectTimeout(2 * time.Second))
	if tok := bad.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		bad.Disconnect(0)
		t.Fatal("wrong password admitted")
	}
	// The configured user is the agent's own: it may read every device's
	// telemetry, not publish it; devices log in with their own identity.
	own := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("dashboard").
		SetUsername("fleet").SetPassword("s3cret").SetConnectTimeout(5 * time.Second))
	if tok := own.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("right password refused: %v", tok.Error())
	}
	defer own.Disconnect(50)
	got := make(chan string, 1)
	if tok := own.Subscribe("devices/+/telemetry", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("agent user subscribing to telemetry: %v", tok.Error())
	} else if code := tok.(*mqtt.SubscribeToken).Result()["devices/+/telemetry"]; code >= 0x80 {
		t.Fatalf("agent user refused telemetry (code %#x)", code)
	}
	// A configured user turns anonymous access off.
	anon := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("anon").SetConnectTimeout(2 * time.Second))
	if tok := anon.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		anon.Disconnect(0)
		t.Fatal("anonymous client admitted with ingest.mqtt.username set")
	}
	_, secret, err := a.RegisterDevice(context.Background(), "dev-ok", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("dev-ok").
		SetUsername("dev-ok").SetPassword(secret).SetConnectTimeout(5 * time.Second))
	if tok := good.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("registered device refused: %v", tok.Error())
	}
	defer good.Disconnect(50)
	publish(t, good, "devices/dev-ok/telemetry", `{"v":1}`)
	waitFor(t, 20*time.Second, "device registered", func() (bool, string) {
		rec, found, err := a.Device(context.Background(), "dev-ok")
		return found && rec.Messages == 1, fmt.Sprintf("record %+v (found %v, err %v); ingest %+v; registry %+v",
			rec, found, err, a.Ingest().Stats(), a.registry.Stats())
	})
	select {
	case topic := <-got:
		if topic != "devices/dev-ok/telemetry" {
			t.Fatalf("agent user received %s", topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent user did not receive the device's telemetry")
	}

	// A missing password file fails Start, naming the field.
	cfg := testConfig(t, "nopw")
	withIngest(&cfg)
	cfg.Ingest.MQTT.Username = "fleet"
	cfg.Ingest.MQTT.PasswordFile = filepath.Join(t.TempDir(), "absent")
	b, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("nopw")})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "ingest.mqtt.password_file") {
		b.Kill()
		t.Fatalf("missing password file: %v", err)
	}
}
