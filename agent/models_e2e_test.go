package agent_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/models"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/modeltest"
)

// TestDeployedModelServesReadings: the whole path with the agent's own
// model runtime. A model pushed to a real control plane and deployed to
// the agent's label reaches it (signed, sealed), is verified and serves:
// readings a device publishes to the agent's broker get predictions on
// devices/{id}/inference equal to fedlearn's forward pass over the same
// readings. A version whose schema reads a metric the device does not
// send is refused by the agent and version 1 keeps serving.
func TestDeployedModelServesReadings(t *testing.T) {
	e := startEnrolled(t, "edge-m", "models-e2e", map[string]string{"site": "a"}, nil)
	cp, a := e.cp, e.a

	// The device sends first, so the agent knows its metrics.
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("room-1"))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer dev.Disconnect(50)
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	type sent struct {
		at     time.Time
		values map[string]float64
	}
	var all []sent
	send := func(i int) {
		at := base.Add(time.Duration(i) * time.Second)
		v := map[string]float64{"temperature": 18 + float64(i%9), "humidity": 30 + float64(i%13), "co2": 420 + float64((i*71)%900)}
		b, _ := json.Marshal(v)
		if tok := dev.Publish("devices/room-1/telemetry", 1, false, fmt.Sprintf(`{"ts":%d,%s`, at.Unix(), b[1:])); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		all = append(all, sent{at, v})
	}
	send(0)
	waitUntil(t, 10*time.Second, "device known", func() (bool, string) {
		devs, err := a.Devices(t.Context())
		return err == nil && len(devs) == 1, fmt.Sprint(devs, err)
	})

	f := modeltest.Comfort(t, "1", 21)
	plain, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	e.deploy(t, plain, "comfort", "1", "site=a")

	// Windows fill from the readings committed once the model serves:
	// reading 0 came before.
	all = nil
	var mu sync.Mutex
	var got []map[string]any
	watch := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("watcher"))
	if tok := watch.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer watch.Disconnect(50)
	if tok := watch.Subscribe("devices/room-1/inference", 1, func(_ mqtt.Client, m mqtt.Message) {
		var p map[string]any
		if err := json.Unmarshal(m.Payload(), &p); err != nil {
			t.Errorf("%s: %v", m.Payload(), err)
		}
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i := 1; i <= 30; i++ {
		send(i)
	}
	waitUntil(t, 15*time.Second, "30 predictions", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 30, fmt.Sprint(len(got))
	})
	mu.Lock()
	preds := append([]map[string]any(nil), got...)
	mu.Unlock()
	for _, p := range preds {
		at, err := time.Parse(time.RFC3339Nano, p["time"].(string))
		if err != nil {
			t.Fatal(err)
		}
		raw := make([]float64, 3)
		f.Schema.Extract(raw, at.UnixNano(), func(metric string) []fedlearn.Point {
			var pts []fedlearn.Point
			for _, s := range all {
				if !s.at.After(at) {
					pts = append(pts, fedlearn.Point{T: s.at.UnixNano(), V: s.values[metric]})
				}
			}
			return pts
		})
		wc, wp := modeltest.Forward(t, f, raw)
		class := p["class"].(map[string]any)
		probs := p["probabilities"].([]any)
		if p["model"] != "comfort" || p["version"] != "1" || class["index"].(float64) != float64(wc) || class["label"] != f.Labels[wc] ||
			!modeltest.Close([]float64{probs[0].(float64), probs[1].(float64)}, wp, 1e-12) {
			t.Fatalf("prediction %v, forward %d %v", p, wc, wp)
		}
	}

	// Version 2 reads a metric room-1 never sends: the agent refuses it.
	f2 := modeltest.Comfort(t, "2", 22)
	f2.Schema.Features[1].Metric = "rel_humidity"
	plain2, err := f2.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.PushModel(t.Context(), plain2); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.DeployModel(t.Context(), "comfort", "2", "site=a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "the agent refuses version 2", func() (bool, string) {
		m := metricsText(t, "http://"+a.APIAddr())
		return strings.Contains(m, `edgefleet_model_install_failures_total{reason="devices"} 1`) ||
			strings.Contains(m, `edgefleet_model_install_failures_total{reason="devices"} 2`), a.Uplink().Status().LastError
	})
	if m, _ := a.Models().Get("comfort"); m.Version() != "1" {
		t.Fatalf("serving %s after version 2 was refused", m.Version())
	}

	// Undeployed from site=a, the model stops serving and its file goes.
	if _, err := cp.UndeployModel(t.Context(), "comfort", "site=a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "the agent removes comfort", func() (bool, string) {
		_, ok := a.Models().Get("comfort")
		return !ok, fmt.Sprint(a.Models().Installed(), a.Uplink().Status().LastError)
	})
	if _, err := os.Stat(filepath.Join(e.cfg.DataDir, models.DirName, "comfort.model")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("model file still there: %v", err)
	}
	if m := metricsText(t, "http://"+a.APIAddr()); strings.Contains(m, `edgefleet_model_info{model="comfort"`) {
		t.Fatal("edgefleet_model_info still reports comfort")
	}
}

func metricsText(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
