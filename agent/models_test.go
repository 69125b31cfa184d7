package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/modeltest"
)

// inferenceMsg is a prediction as published on devices/{id}/inference.
type inferenceMsg struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Device  string `json:"device"`
	Class   struct {
		Index int    `json:"index"`
		Label string `json:"label"`
	} `json:"class"`
	Probabilities []float64 `json:"probabilities"`
	Time          time.Time `json:"time"`
}

// TestModelServesReadings: a signed model installed on an agent runs on
// the readings devices publish to the embedded broker; each prediction on
// devices/{id}/inference equals fedlearn's forward pass over the same
// readings; the local API lists the model and predicts; the model is
// loaded again after a restart; a refused file leaves it serving.
func TestModelServesReadings(t *testing.T) {
	t.Parallel()
	k := modeltest.Key(t, 5)
	keyFile := modeltest.KeyFile(t, t.TempDir(), k)
	mod := func(cfg *Config) {
		withIngest(cfg)
		cfg.Models.VerifyingKeyFile = keyFile
	}
	c := newCluster(t)
	a := c.start("edge", nil, mod)
	f := modeltest.Comfort(t, "1", 11)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Models().Install(ctx, modeltest.Sign(t, f, k)); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var got []inferenceMsg
	sub := mqttClient(t, a.MQTTURL(), "watcher")
	if tok := sub.Subscribe("devices/+/inference", 1, func(_ mqtt.Client, m mqtt.Message) {
		var p inferenceMsg
		if err := json.Unmarshal(m.Payload(), &p); err != nil || m.Topic() != "devices/"+p.Device+"/inference" {
			t.Errorf("%s: %s (%v)", m.Topic(), m.Payload(), err)
			return
		}
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	// Two devices send all three metrics; a third lacks co2 (no model
	// runs for it).
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	type sent struct {
		dev    string
		at     time.Time
		values map[string]float64
	}
	var all []sent
	dev := mqttClient(t, a.MQTTURL(), "devices")
	for i := 0; i < 20; i++ {
		at := base.Add(time.Duration(i) * 2 * time.Second)
		for d, id := range []string{"room-1", "room-2", "hall"} {
			v := map[string]float64{"temperature": 19 + float64(i%7) + float64(d), "humidity": 30 + float64(i%11)*2}
			if id != "hall" {
				v["co2"] = 450 + float64((i*37+d*100)%600)
			}
			b, _ := json.Marshal(v)
			payload := fmt.Sprintf(`{"ts":%d,%s`, at.Unix(), b[1:])
			publish(t, dev, "devices/"+id+"/telemetry", payload)
			all = append(all, sent{id, at, v})
		}
	}
	waitFor(t, 15*time.Second, "40 predictions", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 40, fmt.Sprintf("%d predictions", len(got))
	})
	time.Sleep(200 * time.Millisecond) // none more should come
	mu.Lock()
	preds := append([]inferenceMsg(nil), got...)
	mu.Unlock()
	if len(preds) != 40 {
		t.Fatalf("%d predictions, want 40 (20 readings of each of the 2 devices with every metric)", len(preds))
	}
	for _, p := range preds {
		if p.Device == "hall" || p.Model != "comfort" || p.Version != "1" {
			t.Fatalf("prediction %+v", p)
		}
		series := func(metric string) []fedlearn.Point {
			var pts []fedlearn.Point
			for _, s := range all {
				if v, ok := s.values[metric]; ok && s.dev == p.Device && !s.at.After(p.Time) {
					pts = append(pts, fedlearn.Point{T: s.at.UnixNano(), V: v})
				}
			}
			return pts
		}
		raw := make([]float64, 3)
		f.Schema.Extract(raw, p.Time.UnixNano(), series)
		wc, wp := modeltest.Forward(t, f, raw)
		if p.Class.Index != wc || p.Class.Label != f.Labels[wc] || !modeltest.Close(p.Probabilities, wp, 1e-12) {
			t.Fatalf("%s at %s: published class %d %v, forward %d %v", p.Device, p.Time, p.Class.Index, p.Probabilities, wc, wp)
		}
	}

	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	list := api.expect("GET", "/v1/models", "", 200)
	models := list["models"].([]any)
	m0 := models[0].(map[string]any)
	if len(models) != 1 || m0["name"] != "comfort" || m0["version"] != "1" || m0["arch"] != "mlp:8" || m0["predictions"].(float64) != 40 {
		t.Fatalf("models %v", list)
	}
	res := api.expect("POST", "/v1/models/comfort/predict", `{"features":{"temp":24,"hum":null,"co2_mean":1100}}`, 200)
	wc, wp := modeltest.Forward(t, f, []float64{24, nanF(), 1100})
	class := res["class"].(map[string]any)
	probs := res["probabilities"].([]any)
	if class["index"].(float64) != float64(wc) || class["label"] != f.Labels[wc] || probs[0].(float64) != wp[0] || probs[1].(float64) != wp[1] {
		t.Fatalf("predict %v, forward %d %v", res, wc, wp)
	}
	for body, want := range map[string]string{
		`{"features":[1,2]}`:                                "wrong number of features: 2 given",
		`{"features":[1,"NaN",3]}`:                          `feature "hum" (index 1) is NaN: not finite`,
		`{"features":[1,2,1e999]}`:                          `feature "co2_mean" (index 2) is 1e999: not finite`,
		`{"features":{"temp":1,"hum":2,"co2":3}}`:           `no feature "co2"`,
		`{"features":{"temp":1,"hum":2}}`:                   `feature "co2_mean" (index 2) is missing`,
		`{"features":[1,2,"x"]}`:                            `want a number or null`,
		`{"feature":[1,2,3]}`:                               `unknown field "feature"`,
		`{"features":{"temp":1,"hum":2,"co2_mean":"-Inf"}}`: `is -Inf: not finite`,
	} {
		_, obj, raw := api.do("POST", "/v1/models/comfort/predict", body)
		if msg, _ := obj["error"].(string); !strings.Contains(msg, want) {
			t.Errorf("%s: %s, want 400 saying %q", body, raw, want)
		}
		api.expect("POST", "/v1/models/comfort/predict", body, 400)
	}
	api.expect("POST", "/v1/models/nope/predict", `{"features":[1,2,3]}`, 404)

	// A bad file is refused; the model keeps serving.
	if err := a.Models().Install(ctx, modeltest.SignedWithNaN(t, modeltest.Comfort(t, "2", 1), k)); err == nil {
		t.Fatal("NaN weights installed")
	}
	if m, _ := a.Models().Get("comfort"); m.Version() != "1" {
		t.Fatalf("serving %s after a refused install", m.Version())
	}
	metrics := api.metrics()
	for _, want := range []string{
		`edgefleet_inference_predictions_total{model="comfort"} 41`,
		`edgefleet_model_info{digest="` + a.Models().List()[0].Digest() + `",model="comfort",version="1"} 1`,
		`edgefleet_model_install_failures_total{reason="model"} 1`,
		`edgefleet_inference_latency_seconds_count 40`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Restarted, the agent serves the model again.
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	a = c.start("edge", nil, mod)
	if m, ok := a.Models().Get("comfort"); !ok || m.Version() != "1" {
		t.Fatal("model not loaded after a restart")
	}
}

func (c apiClient) metrics() string {
	c.t.Helper()
	_, _, raw := c.do("GET", "/metrics", "")
	return raw
}

func nanF() float64 { return math.NaN() }

// TestModelsWithoutIngestOrDisabled: without ingestion models still
// install and answer predict; with the model runtime off the API says so.
func TestModelsWithoutIngestOrDisabled(t *testing.T) {
	t.Parallel()
	k := modeltest.Key(t, 6)
	keyFile := modeltest.KeyFile(t, t.TempDir(), k)
	c := newCluster(t)
	a := c.start("no-ingest", nil, func(cfg *Config) { cfg.Models.VerifyingKeyFile = keyFile })
	if a.Ingest() != nil {
		t.Fatal("ingestion runs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Models().Install(ctx, modeltest.Sign(t, modeltest.Comfort(t, "1", 2), k)); err != nil {
		t.Fatal(err)
	}
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	api.expect("POST", "/v1/models/comfort/predict", `{"features":[21,40,600]}`, 200)

	b := c.start("disabled", nil, func(cfg *Config) { cfg.Models.Enabled = false })
	if b.Models() != nil {
		t.Fatal("model manager with models.enabled false")
	}
	off := apiClient{t: t, base: "http://" + b.APIAddr()}
	if obj := off.expect("GET", "/v1/models", "", 503); !strings.Contains(obj["error"].(string), "models.enabled") {
		t.Fatalf("disabled: %v", obj)
	}
}
