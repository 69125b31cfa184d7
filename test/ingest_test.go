package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cptest"
)

// getJSON decodes the answer of GET path into out; it fails on a status
// other than 200.
func (p *proc) getJSON(path string, out any) error {
	resp, err := http.Get(p.url(path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, out)
}

// ingestStatus is the part of GET /v1/ingest the tests read.
type ingestStatus struct {
	Enabled    bool   `json:"enabled"`
	Broker     string `json:"broker"`
	Subscribed bool   `json:"subscribed"`
	Stats      struct {
		Acked int64 `json:"acked"`
	} `json:"stats"`
}

// waitBroker waits until the agent is subscribed to its broker and
// returns the broker's URL.
func (p *proc) waitBroker() string {
	p.t.Helper()
	var st ingestStatus
	eventually(p.t, 20*time.Second, p.name+" subscribed to its broker", func() error {
		st = ingestStatus{}
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if !st.Enabled || !st.Subscribed {
			return fmt.Errorf("ingest %+v", st)
		}
		return nil
	})
	return st.Broker
}

// publishLines publishes one QoS 1 message per line: with mosquitto_pub,
// the client real devices use, when it is installed, else with paho.
func publishLines(t *testing.T, broker, topic string, lines []string) {
	t.Helper()
	u, err := url.Parse(broker)
	if err != nil {
		t.Fatal(err)
	}
	if bin, err := exec.LookPath("mosquitto_pub"); err == nil {
		cmd := exec.Command(bin, "-h", u.Hostname(), "-p", u.Port(), "-q", "1", "-t", topic, "-l")
		cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
		return
	}
	c := mqttConnect(t, broker, fmt.Sprintf("pub-%d", time.Now().UnixNano()))
	defer c.Disconnect(100)
	for _, l := range lines {
		if tok := c.Publish(topic, 1, false, l); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish to %s: %v", topic, tok.Error())
		}
	}
}

func mqttConnect(t *testing.T, broker, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to %s: %v", broker, tok.Error())
	}
	return c
}

type deviceRecord struct {
	ID         string             `json:"id"`
	Agent      string             `json:"agent"`
	Messages   int64              `json:"messages"`
	Readings   int64              `json:"readings"`
	LastValues map[string]float64 `json:"last_values"`
}

// TestDevicesOverMQTT: an edge-agent process on defaults (but its ports)
// ingests device messages from its embedded broker; /v1/devices lists the
// device, /v1/dead-letters the malformed message, a command reaches the
// device, and after kill -9 and a restart the device's counters continue.
func TestDevicesOverMQTT(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	p := newProc(t, "edge-mqtt")
	// The registry writes a device's record on first sight and then at
	// most every device_registry_interval (30 s by default); the device's
	// first message may commit alone, so refresh often here.
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte("ingest:\n  device_registry_interval: 200ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.extra = append(p.extra, "--config", cfg)
	p.start()
	broker := p.waitBroker()
	if !strings.HasPrefix(broker, "tcp://127.0.0.1:") {
		t.Fatalf("embedded broker %q", broker)
	}

	now := time.Now().Unix()
	var lines []string
	for i := 0; i < 20; i++ {
		lines = append(lines, fmt.Sprintf(`{"ts":%d,"temp":%d,"door":true}`, now-100+int64(i), 20+i))
	}
	lines = append(lines, `{"temp": oops}`)
	publishLines(t, broker, "devices/boiler-7/telemetry", lines)

	var rec deviceRecord
	eventually(t, 20*time.Second, "device in /v1/devices", func() error {
		var out struct {
			Devices []deviceRecord `json:"devices"`
		}
		if err := p.getJSON("/v1/devices", &out); err != nil {
			return err
		}
		if len(out.Devices) != 1 || out.Devices[0].Messages != 20 {
			return fmt.Errorf("devices %+v", out.Devices)
		}
		rec = out.Devices[0]
		return nil
	})
	if rec.ID != "boiler-7" || rec.Agent != "edge-mqtt" || rec.Readings != 40 || rec.LastValues["temp"] != 39 || rec.LastValues["door"] != 1 {
		t.Fatalf("record %+v", rec)
	}
	var dl struct {
		Items []struct {
			Topic   string `json:"topic"`
			Reason  string `json:"reason"`
			Payload []byte `json:"payload"`
		} `json:"items"`
	}
	if err := p.getJSON("/v1/dead-letters", &dl); err != nil {
		t.Fatal(err)
	}
	if len(dl.Items) != 1 || dl.Items[0].Topic != "devices/boiler-7/telemetry" || string(dl.Items[0].Payload) != `{"temp": oops}` || dl.Items[0].Reason == "" {
		t.Fatalf("dead letters %+v", dl)
	}

	// A command through the API arrives on the device's subscription.
	dev := mqttConnect(t, broker, "boiler-7")
	defer dev.Disconnect(100)
	got := make(chan string, 1)
	if tok := dev.Subscribe("devices/boiler-7/commands", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	resp, err := http.Post(p.url("/v1/devices/boiler-7/commands"), "application/octet-stream", strings.NewReader("reboot"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("command: %s: %s", resp.Status, body)
	}
	select {
	case c := <-got:
		if c != "reboot" {
			t.Fatalf("device got %q", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not delivered")
	}

	// edgectl reads the same API.
	out, code := runBin(t, "edgectl", "devices", "list", "--agent", "http://"+p.api, "--json")
	if code != 0 || !strings.Contains(out, "boiler-7") {
		t.Fatalf("edgectl devices list: exit %d: %s", code, out)
	}

	// kill -9, restart: the registry continues from the ingestion database.
	p.kill9()
	p.start()
	broker = p.waitBroker()
	publishLines(t, broker, "devices/boiler-7/telemetry", []string{fmt.Sprintf(`{"ts":%d,"temp":50}`, now)})
	eventually(t, 20*time.Second, "counters continue after restart", func() error {
		var r deviceRecord
		if err := p.getJSON("/v1/devices/boiler-7", &r); err != nil {
			return err
		}
		if r.Messages != 21 || r.LastValues["temp"] != 50 {
			return fmt.Errorf("record %+v", r)
		}
		return nil
	})
}

// TestTelemetryReachesControlPlaneOnce: an agent enrolled with a real
// control plane uploads what devices publish to its embedded broker; every
// reading arrives exactly once, also across a kill -9 of the agent, and
// the control plane shows the agent online.
func TestTelemetryReachesControlPlaneOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	cpCfg := cptest.Config(t.TempDir())
	cpCfg.HeartbeatInterval = time.Second
	srv, cp := cptest.Start(t, cpCfg)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	p := newEnrolledProc(ctx, t, srv, cp, "edge-cp")
	p.start()
	broker := p.waitBroker()

	start := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	batch := func(from, n int) []string { return telemetryLines(start, from, n) }
	const first, second = 300, 200
	publishLines(t, broker, "devices/d1/telemetry", batch(0, first/2))
	publishLines(t, broker, "devices/d2/telemetry", batch(first/2, first/2))

	var agentID string
	eventually(t, 30*time.Second, "agent enrolled and online", func() error {
		agents, err := cp.ListAgents(ctx, cpapi.AgentFilter{})
		if err != nil {
			return err
		}
		if len(agents) != 1 || agents[0].Name != "edge-cp" || agents[0].State != cpapi.StateOnline {
			return fmt.Errorf("agents %+v", agents)
		}
		agentID = agents[0].ID
		return nil
	})
	count := func() (int64, error) {
		res, err := cp.QueryTelemetry(ctx, cpapi.TelemetryQuery{Agent: agentID, From: start.Add(-time.Hour), To: time.Now().Add(time.Hour), Bucket: 24 * time.Hour})
		if err != nil {
			return 0, err
		}
		var n int64
		for _, s := range res.Series {
			for _, b := range s.Buckets {
				n += b.Count
			}
		}
		return n, nil
	}
	waitCount := func(want int64) {
		t.Helper()
		eventually(t, 30*time.Second, fmt.Sprintf("%d readings at the control plane", want), func() error {
			n, err := count()
			if err == nil && n != want {
				err = fmt.Errorf("%d readings", n)
			}
			return err
		})
	}
	waitCount(2 * first)

	// The control plane goes away: the agent keeps ingesting, its outbox
	// keeps the telemetry. Then the agent is killed (kill -9) and both come
	// back: everything arrives, nothing twice.
	cpAddr := srv.Addr().String()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	publishLines(t, broker, "devices/d1/telemetry", batch(first, second))
	eventually(t, 20*time.Second, "agent commits while the control plane is down", func() error {
		var st ingestStatus
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if st.Stats.Acked != first+second {
			return fmt.Errorf("acked %d", st.Stats.Acked)
		}
		return nil
	})
	eventually(t, 20*time.Second, "uplink reports the outage", func() error {
		var up struct {
			LastError string `json:"last_error"`
		}
		if err := p.getJSON("/v1/uplink", &up); err != nil {
			return err
		}
		if up.LastError == "" {
			return fmt.Errorf("no error reported")
		}
		return nil
	})
	p.kill9()
	cpCfg.Listen = cpAddr
	var err error
	if srv, err = controlplane.New(cpCfg); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	p.start()
	waitCount(2 * (first + second))
	var up struct {
		Enabled  bool   `json:"enabled"`
		Enrolled bool   `json:"enrolled"`
		AgentID  string `json:"agent_id"`
	}
	if err := p.getJSON("/v1/uplink", &up); err != nil {
		t.Fatal(err)
	}
	if !up.Enabled || !up.Enrolled || up.AgentID != agentID {
		t.Fatalf("uplink status %+v (agent id %s)", up, agentID)
	}
	// Let a few more upload rounds pass: still exactly once.
	time.Sleep(1500 * time.Millisecond)
	if n, err := count(); err != nil || n != 2*(first+second) {
		t.Fatalf("after settling: %d readings (%v), want %d", n, err, 2*(first+second))
	}
	a, err := cp.GetAgent(ctx, agentID)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != cpapi.StateOnline || a.Health == nil || a.Health.Status != "ok" || a.Resources == nil || a.Resources.DiskTotalBytes == 0 {
		t.Fatalf("agent at the control plane: %+v health %+v resources %+v", a, a.Health, a.Resources)
	}
}

// newEnrolledProc is an edge-agent process (not started yet) that
// enrolls with the control plane srv with a single-use token made by cp.
func newEnrolledProc(ctx context.Context, t *testing.T, srv *controlplane.Server, cp *cpapi.Client, name string) *proc {
	t.Helper()
	toks, err := cp.CreateEnrollmentTokens(ctx, time.Hour, map[string]string{"site": "test"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(toks[0].Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newProc(t, name)
	p.extra = []string{"--control-plane", srv.URL(), "--ca", srv.CAPath(), "--enrollment-token-file", tokFile}
	return p
}

// telemetryLines returns flat JSON messages i = from..from+n-1 of a
// device: time start + i×10 ms, temp i, hum i%100.
func telemetryLines(start time.Time, from, n int) []string {
	var lines []string
	for i := from; i < from+n; i++ {
		ts := float64(start.UnixMilli()+int64(i)*10) / 1000
		lines = append(lines, fmt.Sprintf(`{"ts":%.3f,"temp":%d,"hum":%d}`, ts, i, i%100))
	}
	return lines
}
