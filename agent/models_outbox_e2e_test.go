package agent_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/modeltest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// TestEveryPredictionPublishedThroughMosquitto: an agent ingesting from
// Mosquitto serves a model on every reading with a tiny window of
// predictions in flight (models.publish_max_in_flight 1); waves of
// readings from 200 devices make 200 predictions at a time, far ahead of
// the broker's acknowledgements; a subscriber on Mosquitto still receives
// a prediction for every reading. (One reading per device per wave: the
// runtime predicts for a device's readings that arrive together only as
// far as its windows keep them.)
func TestEveryPredictionPublishedThroughMosquitto(t *testing.T) {
	mosq, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir()})
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer mosq.Stop()
	e := startEnrolled(t, "edge-o", "outbox-e2e", map[string]string{"site": "a"}, func(cfg *agent.Config) {
		cfg.Ingest.MQTT.Broker = mosq.URL()
		cfg.Models.PublishMaxInFlight = 1
	})
	a := e.a
	connect := func(id string) mqtt.Client {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mosq.URL()).SetClientID(id))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		return c
	}
	dev := connect("devices")
	defer dev.Disconnect(50)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	const devices, waves = 200, 10
	// wave sends one reading of every device at base+w seconds and waits
	// for the agent to acknowledge them.
	wave := func(w int) {
		toks := make([]mqtt.Token, 0, devices)
		for d := 0; d < devices; d++ {
			i := w*devices + d
			p := fmt.Sprintf(`{"ts":%d,"temperature":%d,"humidity":%d,"co2":%d}`, base.Add(time.Duration(w)*time.Second).Unix(), 18+i%9, 30+i%13, 420+(i*71)%900)
			toks = append(toks, dev.Publish(fmt.Sprintf("devices/dev-%d/telemetry", d), 1, false, p))
		}
		for _, tok := range toks {
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
	}
	wave(0)
	waitUntil(t, 10*time.Second, "devices known", func() (bool, string) {
		devs, err := a.Devices(t.Context())
		return err == nil && len(devs) == devices, fmt.Sprint(len(devs), err)
	})
	plain, err := modeltest.Comfort(t, "1", 5).Encode()
	if err != nil {
		t.Fatal(err)
	}
	e.deploy(t, plain, "comfort", "1", "site=a")

	var mu sync.Mutex
	got := map[string]bool{} // devices and reading times with a prediction
	watch := connect("watcher")
	defer watch.Disconnect(50)
	if tok := watch.Subscribe("devices/+/inference", 1, func(_ mqtt.Client, m mqtt.Message) {
		var p struct {
			Device string `json:"device"`
			Time   string `json:"time"`
		}
		if err := json.Unmarshal(m.Payload(), &p); err != nil {
			t.Errorf("%s: %v", m.Payload(), err)
		}
		mu.Lock()
		got[p.Device+" "+p.Time] = true
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for w := 1; w <= waves; w++ {
		wave(w)
		time.Sleep(100 * time.Millisecond) // the runtime takes the wave alone
	}
	const n = devices * waves
	waitUntil(t, 20*time.Second, "a prediction of every reading", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		if len(got) >= n {
			return true, ""
		}
		var state []string
		for _, line := range strings.Split(metricsText(t, "http://"+a.APIAddr()), "\n") {
			if (strings.HasPrefix(line, "edgefleet_inference_p") || strings.HasPrefix(line, "edgefleet_ingest_")) && !strings.Contains(line, "_bucket") && !strings.Contains(line, "latency") {
				state = append(state, line)
			}
		}
		return false, fmt.Sprintf("%d of %d; %s", len(got), n, strings.Join(state, "; "))
	})
}
