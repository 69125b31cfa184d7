package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/cli"
)

type agentResult struct {
	code           int
	stdout, stderr string
}

// runAgent executes edge-agent in-process.
func runAgent(t *testing.T, args ...string) agentResult {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Run(context.Background(), newRoot(), args, &out, &errb)
	return agentResult{code: code, stdout: out.String(), stderr: errb.String()}
}

func mustAgent(t *testing.T, args ...string) string {
	t.Helper()
	r := runAgent(t, args...)
	if r.code != 0 {
		t.Fatalf("edge-agent %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// ingestMessage is a received MQTT message for ingest.Ingestor.Handle.
type ingestMessage struct {
	topic   string
	payload []byte
	acked   *atomic.Int64
}

func (m ingestMessage) Topic() string     { return m.topic }
func (m ingestMessage) Payload() []byte   { return m.payload }
func (m ingestMessage) Duplicate() bool   { return false }
func (m ingestMessage) MessageID() uint16 { return 0 }
func (m ingestMessage) Ack()              { m.acked.Add(1) }

// inspectT0 is the ingestor's clock in the data directories built here.
var inspectT0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// ingestData commits, through an Ingestor without a broker, ten readings
// of two metrics from each of room-0 and room-1 (five messages each) and
// two messages that are dead-lettered (bad JSON, a topic outside the
// pattern).
func ingestData(t *testing.T, dir string) {
	t.Helper()
	in, err := ingest.New(ingest.Config{DataDir: dir, Clock: clock.NewManual(inspectT0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64
	msgs := []ingestMessage{
		{topic: "devices/room-1/telemetry", payload: []byte(`hello`)},
		{topic: "elsewhere/room-9", payload: []byte(`{"temperature":1}`)},
	}
	for i := 0; i < 10; i++ {
		ts := inspectT0.Add(time.Duration(i-10) * time.Second).Unix()
		msgs = append(msgs, ingestMessage{topic: fmt.Sprintf("devices/room-%d/telemetry", i%2),
			payload: fmt.Appendf(nil, `{"temperature":%d,"humidity":30.5,"ts":%d}`, 20+i, ts)})
	}
	for _, m := range msgs {
		m.acked = &acked
		if err := in.Handle(m); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for acked.Load() < int64(len(msgs)) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages acknowledged", acked.Load(), len(msgs))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
}

// stateData writes a replicated state database with one key.
func stateData(t *testing.T, dir string) {
	t.Helper()
	s, err := crdt.Open(filepath.Join(dir, "state.db"), crdt.Options{ReplicaID: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(context.Background(), "labels", "site", []byte(`"berlin"`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// identityData writes an uplink identity with a certificate expiring at
// notAfter.
func identityData(t *testing.T, dir string, notAfter time.Time) {
	t.Helper()
	idDir := filepath.Join(dir, "controlplane")
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := `{"agent_id":"ag-3f2a","server":"https://cp.example:8443","enrolled_at":"2025-02-01T09:30:00Z"}`
	if err := os.WriteFile(filepath.Join(idDir, "identity.json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ag-3f2a"},
		NotBefore: notAfter.Add(-24 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(filepath.Join(idDir, "agent.pem"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestInspectFullDataDir(t *testing.T) {
	dir := t.TempDir()
	ingestData(t, dir)
	stateData(t, dir)
	notAfter := time.Date(2026, 2, 1, 9, 30, 0, 0, time.UTC)
	identityData(t, dir, notAfter)
	before := fileHash(t, filepath.Join(dir, ingest.StoreFile))

	out := mustAgent(t, "inspect", "--data", dir, "--json")
	var rep struct {
		DataDir           string           `json:"data_dir"`
		Readings          int64            `json:"readings"`
		DeadLetters       int64            `json:"dead_letters"`
		DeadLetterReasons map[string]int64 `json:"dead_letter_reasons"`
		OutboxPending     int64            `json:"outbox_pending"`
		Devices           []ingest.Device  `json:"devices"`
		Stats             ingest.StoreStats
		State             *stateSummary   `json:"state"`
		Uplink            *uplinkIdentity `json:"uplink"`
		Notes             []string        `json:"notes"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.DataDir != dir || rep.Readings != 20 || rep.DeadLetters != 2 || rep.OutboxPending != 20 || rep.Stats.Messages != 12 {
		t.Fatalf("counts: %+v\n%s", rep, out)
	}
	if rep.DeadLetterReasons["syntax"] != 1 || rep.DeadLetterReasons["bad_topic"] != 1 {
		t.Fatalf("reasons: %v", rep.DeadLetterReasons)
	}
	if len(rep.Devices) != 2 || rep.Devices[0].ID != "room-0" || rep.Devices[0].Messages != 5 || rep.Devices[1].Readings != 10 || len(rep.Devices[1].Metrics) != 2 {
		t.Fatalf("devices: %+v", rep.Devices)
	}
	if rep.State == nil || rep.State.Database != filepath.Join(dir, "state.db") || rep.State.Bytes <= 0 || rep.State.InspectReport == nil || len(rep.State.Collections) == 0 || rep.State.Error != "" {
		t.Fatalf("state: %+v", rep.State)
	}
	u := rep.Uplink
	if u == nil || u.AgentID != "ag-3f2a" || u.Server != "https://cp.example:8443" || !u.EnrolledAt.Equal(time.Date(2025, 2, 1, 9, 30, 0, 0, time.UTC)) ||
		!u.CertificateNotAfter.Equal(notAfter) || u.Error != "" {
		t.Fatalf("uplink: %+v", u)
	}
	if len(rep.Notes) != 0 {
		t.Fatalf("notes: %v", rep.Notes)
	}

	human := strings.Join(strings.Fields(mustAgent(t, "inspect", "--data", dir)), " ")
	for _, want := range []string{
		"Data directory:", dir,
		"Ingestion:", filepath.Join(dir, ingest.StoreFile),
		"20 numeric, 0 text",
		"Dead letters: 2 (bad_topic 1, syntax 1)",
		"Outbox: 20 readings pending in 1 batch (",
		"Devices: 2",
		"State:", filepath.Join(dir, "state.db"),
		"Uplink: agent ag-3f2a at https://cp.example:8443, enrolled 2025-02-01T09:30:00Z",
		"expires 2026-02-01T09:30:00Z",
		"DEVICE", "LAST VALUES",
		"room-0", "humidity=30.5 temperature=28",
		"room-1", "humidity=30.5 temperature=29",
	} {
		if !strings.Contains(human, want) {
			t.Errorf("human output lacks %q:\n%s", want, human)
		}
	}
	if y := mustAgent(t, "inspect", "--data", dir, "-o", "yaml"); !strings.Contains(y, "readings: 20\n") || !strings.Contains(y, "agent_id: ag-3f2a\n") {
		t.Fatalf("yaml:\n%s", y)
	}
	if fileHash(t, filepath.Join(dir, ingest.StoreFile)) != before {
		t.Fatal("inspect changed ingest.db")
	}
}

// TestInspectWhileRunning reads a store that an agent holds open.
func TestInspectWhileRunning(t *testing.T) {
	dir := t.TempDir()
	ingestData(t, dir)
	s, err := ingest.OpenStore(ingest.StoreConfig{Path: filepath.Join(dir, ingest.StoreFile)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := mustAgent(t, "inspect", "--data", dir, "--json")
	var rep struct {
		Readings int64    `json:"readings"`
		Notes    []string `json:"notes"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Readings != 20 {
		t.Fatalf("%v: %s", err, out)
	}
	// Without state and identity, the report says what is missing.
	if len(rep.Notes) != 2 || !strings.Contains(rep.Notes[0], "state.db") || !strings.Contains(rep.Notes[1], "not enrolled") {
		t.Fatalf("notes: %v", rep.Notes)
	}
	human := strings.Join(strings.Fields(mustAgent(t, "inspect", "--data", dir)), " ")
	if !strings.Contains(human, "State: none") || !strings.Contains(human, "Uplink: not enrolled") {
		t.Fatalf("human:\n%s", human)
	}
}

func TestInspectWithoutData(t *testing.T) {
	empty := t.TempDir()
	r := runAgent(t, "inspect", "--data", empty)
	if r.code != 1 || !strings.Contains(r.stderr, "edge-agent: inspect: no agent data in "+empty) || !strings.Contains(r.stderr, "--data") {
		t.Fatalf("empty dir: %+v", r)
	}
	r = runAgent(t, "inspect", "--data", filepath.Join(empty, "missing"), "--json")
	if r.code != 1 || !strings.Contains(r.stderr, "no such file or directory") || r.stdout != "" {
		t.Fatalf("missing dir: %+v", r)
	}
	file := filepath.Join(empty, "f")
	os.WriteFile(file, nil, 0o600)
	if r := runAgent(t, "inspect", "--data", file); r.code != 1 || !strings.Contains(r.stderr, "not a directory") {
		t.Fatalf("file: %+v", r)
	}
	if r := runAgent(t, "inspect", "--data", empty, "extra"); r.code != 2 {
		t.Fatalf("argument: %+v", r)
	}
	// An ingest.db that is not an ingestion database is an error.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, ingest.StoreFile), []byte("not sqlite at all, not at all"), 0o600)
	if r := runAgent(t, "inspect", "--data", bad); r.code != 1 || !strings.Contains(r.stderr, "edge-agent: inspect: ") {
		t.Fatalf("garbage ingest.db: %+v", r)
	}
}

func TestInspectStateOnlyAndBadIdentity(t *testing.T) {
	dir := t.TempDir()
	stateData(t, dir)
	idDir := filepath.Join(dir, "controlplane")
	os.MkdirAll(idDir, 0o700)
	os.WriteFile(filepath.Join(idDir, "identity.json"), []byte(`{"agent_id": 7}`), 0o600)
	out := mustAgent(t, "inspect", "--data", dir, "--json")
	var rep map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if _, ok := rep["readings"]; ok {
		t.Fatalf("readings reported without an ingestion database:\n%s", out)
	}
	if _, ok := rep["state"]; !ok {
		t.Fatalf("no state:\n%s", out)
	}
	var u uplinkIdentity
	json.Unmarshal(rep["uplink"], &u)
	if !strings.Contains(u.Error, "identity.json is not an identity record") {
		t.Fatalf("uplink: %+v", u)
	}
	human := strings.Join(strings.Fields(mustAgent(t, "inspect", "--data", dir)), " ")
	if !strings.Contains(human, "Ingestion: none") || !strings.Contains(human, "Problem:") {
		t.Fatalf("human:\n%s", human)
	}

	// A valid record without its certificate.
	os.WriteFile(filepath.Join(idDir, "identity.json"), []byte(`{"agent_id":"a1","server":"https://cp:1","enrolled_at":"2025-01-01T00:00:00Z"}`), 0o600)
	id, present, err := readIdentity(idDir)
	if err != nil || !present || id.AgentID != "a1" || !strings.Contains(id.Error, "no certificate") {
		t.Fatalf("no cert: %+v %v %v", id, present, err)
	}
}

func TestInspectDataDirResolution(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(conf, []byte("data_dir: /from/config\n"), 0o600)
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	check := func(flag, confFlag, want string) {
		t.Helper()
		got, err := inspectDataDir(flag, confFlag, getenv)
		if err != nil || got != want {
			t.Fatalf("inspectDataDir(%q, %q) with %v = %q, %v; want %q", flag, confFlag, env, got, err, want)
		}
	}
	check("", "", "./edgefleet-data")
	check("", conf, "/from/config")
	env["EDGEFLEET_CONFIG"] = conf
	check("", "", "/from/config")
	env["EDGEFLEET_DATA_DIR"] = "/from/env"
	check("", conf, "/from/env")
	check("/from/flag", conf, "/from/flag")
	delete(env, "EDGEFLEET_DATA_DIR")
	if _, err := inspectDataDir("", filepath.Join(t.TempDir(), "missing.yaml"), getenv); err == nil {
		t.Fatal("missing config file accepted")
	}
}

// FuzzParseIdentity feeds arbitrary identity.json contents: a record is
// accepted only with a non-empty agent id, and nothing panics.
func FuzzParseIdentity(f *testing.F) {
	f.Add([]byte(`{"agent_id":"ag-1","server":"https://cp:8443","enrolled_at":"2025-02-01T09:30:00Z"}`))
	f.Add([]byte(`{"agent_id":""}`))
	f.Add([]byte(`{"agent_id":7}`))
	f.Add([]byte(`{"enrolled_at":"yesterday"}`))
	f.Add([]byte(`[`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var id uplinkIdentity
		err := parseIdentity(data, &id)
		if err == nil && id.AgentID == "" {
			t.Fatalf("accepted %q without an agent id", data)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "identity.json") {
			t.Fatalf("error does not name the file: %v", err)
		}
		// Whatever was read prints without control characters.
		var b strings.Builder
		if err := printInspect(&b, inspectReport{DataDir: "/d", Uplink: &id}); err != nil {
			t.Fatal(err)
		}
		for _, r := range b.String() {
			if r < 0x20 && r != '\n' {
				t.Fatalf("control character %U in\n%q", r, b.String())
			}
		}
	})
}

// TestInspectStoppedAgent inspects the data directory a real agent left
// behind: its ingestion database and replicated state.
func TestInspectStoppedAgent(t *testing.T) {
	cfg := testAgentConfig(t)
	a := startTestAgent(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("sensor-1").SetConnectTimeout(5 * time.Second))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	now := time.Now().Unix()
	for _, p := range []string{fmt.Sprintf(`{"ts":%d,"temp":21.5,"hum":40}`, now-2), fmt.Sprintf(`{"ts":%d,"temp":22.5,"hum":41}`, now-1), `[1,2`} {
		if tok := dev.Publish("devices/sensor-1/telemetry", 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	dev.Disconnect(50)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := a.Ingest().Store().Stats(ctx)
		if err == nil && st.Messages == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	out := mustAgent(t, "inspect", "--data", cfg.DataDir, "--json")
	var rep struct {
		Readings    int64           `json:"readings"`
		DeadLetters int64           `json:"dead_letters"`
		Devices     []ingest.Device `json:"devices"`
		State       *stateSummary   `json:"state"`
		Uplink      *uplinkIdentity `json:"uplink"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Readings != 4 || rep.DeadLetters != 1 || len(rep.Devices) != 1 || rep.Devices[0].ID != "sensor-1" || rep.State == nil || rep.State.Bytes == 0 || rep.Uplink != nil {
		t.Fatalf("report:\n%s", out)
	}
}
