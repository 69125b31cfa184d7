package agentapi_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/datasettest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// startTrainingAgent runs an agent ingesting from a real Mosquitto broker.
func startTrainingAgent(t *testing.T, name string, maxExamples int) (*agent.Agent, *mqtttest.Mosquitto) {
	t.Helper()
	broker, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir()})
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		t.Skipf("SKIP: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Stop() })
	cfg := agenttest.Config(t, name, "training-test")
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.Broker = broker.URL()
	cfg.Ingest.DeviceRegistryInterval = 100 * time.Millisecond
	cfg.Training.MaxExamples = maxExamples
	return agenttest.Start(t, cfg), broker
}

// publish sends lines to devices/{device}/telemetry at QoS 1 and waits
// until the agent has committed them all (the agent ingests no other
// messages).
func publish(t *testing.T, a *agent.Agent, broker, device string, lines []string) {
	t.Helper()
	api := agentapi.New("http://"+a.APIAddr(), nil)
	defer api.CloseIdleConnections()
	eventually(t, "subscribed to the broker", func() error {
		st, err := api.Ingest(t.Context())
		if err == nil && !st.Subscribed {
			err = fmt.Errorf("ingestion %+v", st)
		}
		return err
	})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("dev-" + device).SetMaxResumePubInFlight(1000))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	topic := "devices/" + device + "/telemetry"
	var toks []mqtt.Token
	for _, l := range lines {
		toks = append(toks, c.Publish(topic, 1, false, l))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := api.Ingest(t.Context())
		if err == nil && st.Store != nil && st.Store.Messages >= int64(len(lines)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ingestion %+v, %v; want %d messages stored", st.Store, err, len(lines))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitJob(t *testing.T, api *agentapi.Client, id string, timeout time.Duration) agentapi.TrainingJob {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := api.TrainingJob(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		switch j.State {
		case "done":
			return j
		case "failed", "canceled":
			t.Fatalf("job %s %s: %s", id, j.State, j.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s after %s: %d/%d epochs", id, j.State, timeout, j.EpochsDone, j.Epochs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOccupancyTrainingOnTheAgent replays a slice of the occupancy data
// set over MQTT as one device into a real agent (through Mosquitto),
// trains logistic regression there on what it stored, and checks the
// held-out accuracy and the model it keeps: applied to the rows of the
// data set after the slice (never sent), it predicts occupancy as well.
func TestOccupancyTrainingOnTheAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	now := time.Now()
	const n = 4000
	lines, from, to := datasettest.Occupancy(t, 0, n, now)
	a, broker := startTrainingAgent(t, "trainer-1", 50000)
	publish(t, a, broker.URL(), "room-1", lines)

	base := "http://" + a.APIAddr()
	api := agentapi.New(base, nil)
	t.Cleanup(api.CloseIdleConnections)
	spec := datasettest.OccupancySpec("room-1", "lr", 20, from, to)
	j, err := api.CreateTrainingJob(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.CreateTrainingJob(t.Context(), spec); agentapi.StatusCode(err) != 409 {
		t.Errorf("second job while one runs: %v", err)
	}
	start := time.Now()
	j = waitJob(t, api, j.ID, 120*time.Second)
	t.Logf("trained in %s", time.Since(start).Round(time.Millisecond))
	// Rows sharing a second (the data set has a few) are one reading of
	// each metric in the store: one example.
	distinct, occupied := map[string]bool{}, 0
	for _, l := range lines {
		ts, _, _ := strings.Cut(l, ",")
		distinct[ts] = true
		if strings.HasSuffix(l, `"Occupancy":1}`) {
			occupied++
		}
	}
	d, m := j.Data, int64(len(distinct))
	if d.Anchors != m || d.Examples != m || d.Kept != int(m) || d.Train+d.HeldOut != int(m) || d.HeldOut != int(m)/5 || d.Incomplete != 0 ||
		d.ClassCounts[1] != occupied || d.ClassCounts[0]+d.ClassCounts[1] != int(m) {
		t.Fatalf("data %+v", *d)
	}
	last := j.History[len(j.History)-1]
	for _, h := range j.History {
		t.Logf("epoch %2d: train loss %.4f, held-out loss %.4f accuracy %.4f (%.2fs)", h.Epoch, h.TrainLoss, h.HeldOutLoss, h.HeldOutAcc, h.Seconds)
	}
	if len(j.History) != 20 || last.HeldOutAcc <= 0.95 {
		t.Fatalf("held-out accuracy %.4f after %d epochs, want > 0.95", last.HeldOutAcc, len(j.History))
	}

	// The wire types fit the agent's answers exactly.
	strict[agentapi.TrainingJob](t, base, "GET", "/v1/training/jobs/"+j.ID, "", 200)
	if l := strict[agentapi.TrainingJobList](t, base, "GET", "/v1/training/jobs", "", 200); len(l.Jobs) != 1 {
		t.Fatalf("jobs %+v", l)
	}
	md := strict[agentapi.TrainedModel](t, base, "GET", "/v1/training/jobs/"+j.ID+"/model", "", 200)
	if md.Examples != d.Train || md.HeldOutAcc != last.HeldOutAcc || len(md.Labels) != 2 {
		t.Fatalf("model %+v", md)
	}

	// The model on rows the agent never saw.
	var arch fedlearn.Arch
	var schema fedlearn.Schema
	if err := json.Unmarshal(md.Arch, &arch); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(md.Schema, &schema); err != nil {
		t.Fatal(err)
	}
	w := make(fedlearn.Weights, len(md.Weights))
	for i, x := range md.Weights {
		w[i] = fedlearn.Tensor{Name: x.Name, Shape: x.Shape, Data: x.Data}
	}
	fwd, err := fedlearn.NewForward(arch, w)
	if err != nil {
		t.Fatal(err)
	}
	unseen, _, _ := datasettest.Occupancy(t, n, 8143-n, now)
	ok := 0
	x, probs := make([]float64, 5), make([]float64, 2)
	for _, l := range unseen {
		var row map[string]float64
		if err := json.Unmarshal([]byte(l), &row); err != nil {
			t.Fatal(err)
		}
		for i, m := range datasettest.OccupancyMetrics[:5] {
			x[i] = row[m]
		}
		if err := schema.Normalize(x, x); err != nil {
			t.Fatal(err)
		}
		if c, _ := fwd.Predict(x, probs); c == int(row["Occupancy"]) {
			ok++
		}
	}
	acc := float64(ok) / float64(len(unseen))
	t.Logf("accuracy on the %d rows after the slice: %.4f", len(unseen), acc)
	if acc < 0.9 {
		t.Errorf("accuracy on unseen rows %.4f", acc)
	}
}

// TestTrainingBadSpecsNameTheField: through the client, a bad spec is
// refused with 400 and a message naming the field.
func TestTrainingBadSpecsNameTheField(t *testing.T) {
	a, _ := startTrainingAgent(t, "trainer-2", 1000)
	api := agentapi.New("http://"+a.APIAddr(), nil)
	t.Cleanup(api.CloseIdleConnections)
	now := time.Now()
	good := datasettest.OccupancySpec("room-1", "lr", 5, now.Add(-time.Hour), now)
	for field, edit := range map[string]func(s *agentapi.TrainingJobSpec){
		"model":        func(s *agentapi.TrainingJobSpec) { s.Model = "svm" },
		"epochs":       func(s *agentapi.TrainingJobSpec) { s.Epochs = 1_000_000 },
		"batch_size":   func(s *agentapi.TrainingJobSpec) { s.BatchSize = -1 },
		"learn_rate":   func(s *agentapi.TrainingJobSpec) { s.LearnRate = 100 },
		"labels":       func(s *agentapi.TrainingJobSpec) { s.Labels = nil },
		"from":         func(s *agentapi.TrainingJobSpec) { s.From = now.Add(time.Hour) },
		"max_examples": func(s *agentapi.TrainingJobSpec) { s.MaxExamples = 1001 },
		"device":       func(s *agentapi.TrainingJobSpec) { s.Device = "a/#" },
		"schema.features[0].metric": func(s *agentapi.TrainingJobSpec) {
			s.Schema = []byte(strings.Replace(string(s.Schema), `"metric":"Temperature"`, `"metric":"Occupancy"`, 1))
		},
		"schema.label": func(s *agentapi.TrainingJobSpec) {
			s.Schema = []byte(`{"features":[{"name":"t","metric":"t","agg":"latest"}]}`)
		},
		"schema:": func(s *agentapi.TrainingJobSpec) { s.Schema = []byte(`{"features":"all"}`) },
	} {
		s := good
		edit(&s)
		_, err := api.CreateTrainingJob(t.Context(), s)
		var e *agentapi.Error
		if !errors.As(err, &e) || e.StatusCode != 400 || !strings.Contains(e.Message, field) {
			t.Errorf("%s: %v", field, err)
		}
	}
	if _, err := api.TrainingJob(t.Context(), "nope"); agentapi.StatusCode(err) != 404 {
		t.Errorf("unknown job: %v", err)
	}
}
