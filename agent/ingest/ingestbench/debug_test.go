package ingestbench

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

func TestDebugDrain(t *testing.T) {
	if os.Getenv("DEBUG_DRAIN") == "" {
		t.Skip()
	}
	m := startBroker(t)
	o := Options{Broker: m.URL(), Messages: 100000, Devices: 10}
	o.defaults()
	for _, kind := range []string{"bare", "durable"} {
		id := "dbg-" + kind
		if err := createSession(o, id); err != nil {
			t.Fatal(err)
		}
		if err := publishBacklog(o, id); err != nil {
			t.Fatal(err)
		}
		f, _ := os.Create("/tmp/drain-" + kind + ".prof")
		pprof.StartCPUProfile(f)
		start := time.Now()
		if kind == "bare" {
			done := make(chan struct{})
			n := 0
			c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(id).SetCleanSession(false).
				SetDefaultPublishHandler(func(_ mqtt.Client, _ mqtt.Message) {
					n++
					if n == o.Messages {
						close(done)
					}
				}))
			c.Connect()
			<-done
			c.Disconnect(100)
		} else {
			reg := prometheus.NewRegistry()
			sink := &countSink{target: int64(o.Messages), done: make(chan struct{})}
			in, err := ingest.New(ingest.Config{DataDir: t.TempDir(), MQTT: ingest.MQTTConfig{Broker: o.Broker, ClientID: id}, Sink: sink, Registry: reg})
			if err != nil {
				t.Fatal(err)
			}
			in.Start(context.Background())
			<-sink.done
			in.Stop()
			mfs, _ := reg.Gather()
			for _, mf := range mfs {
				if mf.GetName() == "edgefleet_ingest_commit_seconds" {
					h := mf.GetMetric()[0].GetHistogram()
					fmt.Printf("commits %d, commit time %.3f s\n", h.GetSampleCount(), h.GetSampleSum())
				}
			}
		}
		el := time.Since(start)
		pprof.StopCPUProfile()
		f.Close()
		fmt.Printf("%s: elapsed %s rate %.0f\n", kind, el, float64(o.Messages)/el.Seconds())
	}
}
