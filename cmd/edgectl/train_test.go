package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// TestTrainAgainstAgent drives the train commands against a real agent
// holding a device's readings: a bad spec is refused naming the field, a
// job runs to its end with --wait, list and get show it, and model exports
// what it trained.
func TestTrainAgainstAgent(t *testing.T) {
	e := newDevicesEnv(t)
	ag := startIngestAgent(t, "edge-1")
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()
	dev := mqttConnect(t, ag.MQTTURL(), "sensor-1")
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := 0; i < 200; i++ {
		hot := i % 2
		p := fmt.Sprintf(`{"ts":%d,"temp":%d,"hot":%d}`, start.Add(time.Duration(i)*time.Second).Unix(), 10+20*hot+i%5, hot)
		if tok := dev.Publish("devices/sensor-1/telemetry", 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	api := agentapi.New("http://"+ag.APIAddr(), nil)
	defer api.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := api.Ingest(t.Context())
		if err == nil && st.Store != nil && st.Store.Messages >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readings not stored: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	dir := t.TempDir()
	spec := `{"model":"lr","labels":["cold","hot"],"device":"sensor-1","epochs":3,"learn_rate":0.1,"seed":7,
	  "schema":{"features":[{"name":"t","metric":"temp","agg":"latest"}],"label":{"metric":"hot"}}}`
	bad := strings.Replace(spec, `"epochs":3`, `"epochs":-3`, 1)
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(bad), 0o600)
	if r := e.run("train", "create", "-f", filepath.Join(dir, "bad.json")); r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "epochs: -3") {
		t.Fatalf("bad spec: %+v", r)
	}
	if r := e.runIn(strings.NewReader(`{"modell":"lr"}`), "train", "create", "-f", "-"); r.code != 2 || !strings.Contains(r.stderr, `unknown field "modell"`) {
		t.Fatalf("unknown field: %+v", r)
	}
	r := e.runIn(strings.NewReader(spec), "train", "create", "-f", "-", "--wait")
	out := r.stdout
	if r.code != 0 {
		t.Fatalf("create --wait: %+v", r)
	}
	if !strings.Contains(out, ": done, model lr, 3/3 epochs.") || !strings.Contains(out, "EPOCH") {
		t.Fatalf("create --wait:\n%s", out)
	}
	jobs := decodeJSON[[]agentapi.TrainingJob](t, e.must("train", "list", "--json"))
	if len(jobs) != 1 || jobs[0].State != "done" || jobs[0].Data.Kept != 200 || len(jobs[0].History) != 3 {
		t.Fatalf("list --json: %+v", jobs)
	}
	id := jobs[0].ID
	if out := e.must("train", "list"); !strings.Contains(out, id) || !strings.Contains(out, "3/3") {
		t.Fatalf("list:\n%s", out)
	}
	if j := decodeJSON[agentapi.TrainingJob](t, e.must("train", "get", id, "--json")); j.ID != id || j.History[2].HeldOutAcc != 1 {
		t.Fatalf("get --json: %+v", j)
	}
	path := filepath.Join(dir, "model.json")
	if out := e.must("train", "model", id, "--out", path, "--json"); !strings.Contains(out, "160 examples") {
		t.Fatalf("model --out --json: %q", out)
	}
	b, _ := os.ReadFile(path)
	md := decodeJSON[agentapi.TrainedModel](t, string(b))
	if md.Job != id || len(md.Weights) != 2 || len(md.Weights[0].Data) != 2 {
		t.Fatalf("exported model: %+v", md)
	}
	// --out without --json: a model file for 'models push', with the
	// job's weights.
	mpath := filepath.Join(dir, "sensor.model")
	if out := e.must("train", "model", id, "--out", mpath, "--name", "sensor-hot", "--version", "2"); !strings.Contains(out, "model sensor-hot version 2") {
		t.Fatalf("model --out: %q", out)
	}
	mb, _ := os.ReadFile(mpath)
	f, err := fedlearn.Decode(mb)
	if err != nil || f.Name != "sensor-hot" || f.Version != "2" || f.Training.Examples != 160 || f.Training.Params["job"] != id {
		t.Fatalf("model file: %v %+v", err, f)
	}
	for i, w := range md.Weights {
		if !slices.Equal(f.Weights[i].Data, w.Data) {
			t.Fatalf("weights %s: file %v, job %v", w.Name, f.Weights[i].Data, w.Data)
		}
	}
	if r := e.run("train", "model", id, "--out", mpath, "--name", "-bad"); r.code != 1 || !strings.Contains(r.stderr, "400") {
		t.Fatalf("bad name: %+v", r)
	}
	if r := e.run("train", "get", "nope"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("unknown job: %+v", r)
	}
}
