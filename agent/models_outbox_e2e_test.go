package agent_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
// a prediction for every reading. Last, a backlog: as many devices the
// runtime has not seen yet send three readings each back to back, so
// group commits hold several reading times of a device, and each gets
// its prediction (the runtime follows a device's readings in arrival
// order, which the commit's sink must keep).
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
	const devices, waves, backlog = 200, 10, 3
	// send publishes one reading of every device (named prefix-N) at
	// base+w seconds for each w of ws, device by device, and waits for
	// Mosquitto to take them.
	send := func(prefix string, ws ...int) {
		toks := make([]mqtt.Token, 0, devices*len(ws))
		for d := 0; d < devices; d++ {
			for _, w := range ws {
				i := w*devices + d
				p := fmt.Sprintf(`{"ts":%d,"temperature":%d,"humidity":%d,"co2":%d}`, base.Add(time.Duration(w)*time.Second).Unix(), 18+i%9, 30+i%13, 420+(i*71)%900)
				toks = append(toks, dev.Publish(fmt.Sprintf("devices/%s-%d/telemetry", prefix, d), 1, false, p))
			}
		}
		for _, tok := range toks {
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
	}
	send("dev", 0)
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
		send("dev", w)
		// The runtime takes the wave alone: it has predicted the wave
		// before the next one comes (a commit of several waves is the
		// backlog's case, below).
		waitUntil(t, 20*time.Second, "the wave predicted", func() (bool, string) {
			v := metricLine(t, "http://"+a.APIAddr(), `edgefleet_inference_predictions_total{model="comfort"}`)
			return v >= float64(w*devices), fmt.Sprint(v)
		})
	}
	ws := make([]int, backlog)
	for k := range ws {
		ws[k] = waves + 1 + k
	}
	send("late", ws...)
	const n = devices * (waves + backlog)
	waitUntil(t, 20*time.Second, "a prediction of every reading", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		if len(got) >= n {
			return true, ""
		}
		var state []string
		for _, line := range strings.Split(metricsText(t, "http://"+a.APIAddr()), "\n") {
			if (strings.HasPrefix(line, "edgefleet_inference_") || strings.HasPrefix(line, "edgefleet_ingest_")) && !strings.Contains(line, "_bucket") && !strings.Contains(line, "latency") {
				state = append(state, line)
			}
		}
		missing := map[int]int{} // by reading time, seconds after base
		for w := 1; w <= waves+backlog; w++ {
			at := base.Add(time.Duration(w) * time.Second).UTC().Format(time.RFC3339Nano)
			prefix := "dev"
			if w > waves {
				prefix = "late"
			}
			for d := 0; d < devices; d++ {
				if !got[fmt.Sprintf("%s-%d %s", prefix, d, at)] {
					missing[w]++
				}
			}
		}
		return false, fmt.Sprintf("%d of %d; missing by reading time %v; %s", len(got), n, missing, strings.Join(state, "; "))
	})
}

// metricLine is the value of the sample named series (name and labels as
// the text format prints them) on the agent's /metrics, 0 when absent.
func metricLine(t *testing.T, base, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(metricsText(t, base), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}
