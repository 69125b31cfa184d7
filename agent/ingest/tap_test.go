package ingest

import (
	"testing"
	"time"
)

func TestTapQueuesAcceptedNumericReadings(t *testing.T) {
	tap := NewTap(TapConfig{MaxReadings: 400})
	at := time.Unix(1_800_000_000, 0).UTC()
	name := []byte("dev-1")
	metric := []byte("temperature")
	rs := []Reading{
		{Device: bytesToString(name), Metric: bytesToString(metric), Time: at, Kind: KindNumber, Value: 21},
		{Device: "dev-1", Metric: "humidity", Time: at, Kind: KindNumber, Value: 40},
		{Device: "dev-1", Metric: "temperature", Time: at, Kind: KindString, Text: "warm"},
	}
	tap.Committed(Commit{Readings: rs})
	if tap.Len() != 0 {
		t.Fatal("queued with no metric accepted")
	}
	tap.SetMetrics([]string{"temperature"})
	tap.Committed(Commit{Readings: rs})
	select {
	case <-tap.Ready():
	default:
		t.Fatal("not ready after a commit")
	}
	// The reading's strings are views of buffers reused after Committed.
	copy(name, "XXXXX")
	copy(metric, "XXXXXXXXXXX")
	got := tap.Drain(nil)
	if len(got) != 1 || got[0].Device != "dev-1" || got[0].Metric != "temperature" || got[0].Value != 21 {
		t.Fatalf("drained %+v", got)
	}
	if tap.Len() != 0 {
		t.Fatal("not empty after Drain")
	}
}

func TestTapDropsOldestWhenFull(t *testing.T) {
	tap := NewTap(TapConfig{MaxReadings: 400})
	tap.SetMetrics([]string{"m"})
	at := time.Unix(1_800_000_000, 0).UTC()
	for i := 0; i < 1000; i++ {
		tap.Committed(Commit{Readings: []Reading{{Device: "d", Metric: "m", Time: at.Add(time.Duration(i) * time.Second), Kind: KindNumber, Value: float64(i)}}})
	}
	got := tap.Drain(nil)
	if len(got) > 400 || tap.Dropped() != int64(1000-len(got)) {
		t.Fatalf("%d queued, %d dropped", len(got), tap.Dropped())
	}
	if got[len(got)-1].Value != 999 || got[0].Value != float64(1000-len(got)) {
		t.Fatalf("kept %v..%v, want the newest", got[0].Value, got[len(got)-1].Value)
	}
}
