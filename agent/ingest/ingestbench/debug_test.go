package ingestbench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

func TestDebugDrain(t *testing.T) {
	if !*full {
		t.Skip()
	}
	m := startBroker(t)
	o := Options{Broker: m.URL(), Messages: 100000, Devices: 10}
	o.defaults()
	id := "dbg"
	if err := createSession(o, id); err != nil {
		t.Fatal(err)
	}
	if err := publishBacklog(o, id); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sink := &countSink{target: int64(o.Messages), done: make(chan struct{})}
	start := time.Now()
	in, err := ingest.New(ingest.Config{DataDir: t.TempDir(), MQTT: ingest.MQTTConfig{Broker: o.Broker, ClientID: id}, Sink: sink, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	in.Start(context.Background())
	<-sink.done
	el := time.Since(start)
	in.Stop()
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "edgefleet_ingest_commit_seconds" || mf.GetName() == "edgefleet_ingest_commit_messages" {
			h := mf.GetMetric()[0].GetHistogram()
			fmt.Printf("%s count %d sum %.3f\n", mf.GetName(), h.GetSampleCount(), h.GetSampleSum())
		}
	}
	fmt.Printf("elapsed %s rate %.0f\n", el, float64(o.Messages)/el.Seconds())
}
